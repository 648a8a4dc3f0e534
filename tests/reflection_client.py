"""A generic gRPC client that knows nothing about geokv except what server reflection says.

Usage: reflection_client.py HOST:PORT
Lists the services, checks health, then calls geokv.v1.Kv/Put and Get with messages built from
the reflected descriptors, and shows that a bad request gets INVALID_ARGUMENT.
"""
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def call(channel, pool, service, method, fields):
    svc = pool.FindServiceByName(service)
    m = svc.FindMethodByName(method)
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    stub = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    return stub(req_cls(**fields), timeout=10)


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    print("services: " + ", ".join(services))
    pool = descriptor_pool.DescriptorPool(db)

    health = call(channel, pool, "grpc.health.v1.Health", "Check", {"service": "geokv.v1.Kv"})
    status = pool.FindEnumTypeByName("grpc.health.v1.HealthCheckResponse.ServingStatus")
    print("health: " + status.values_by_number[health.status].name)

    put = call(channel, pool, "geokv.v1.Kv", "Put", {"key": b"generic", "value": b"hello via reflection"})
    print(f"put: version {put.version.hlc}:{put.version.node_id}")
    got = call(channel, pool, "geokv.v1.Kv", "Get", {"key": b"generic"})
    print("get: " + got.entry.value.register.decode())

    try:
        call(channel, pool, "geokv.v1.Kv", "Put", {"key": b"", "value": b"x"})
        print("error: none")
        return 1
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
