#!/usr/bin/env python3
"""Generates the gRPC stubs of geokv's API (proto/geokv/v1) into geokv_client/_gen.

    python3 clients/python/generate.py [--proto DIR]

Needs grpcio-tools (pip install grpcio-tools). The stubs are generated rather than committed
so that they match the protobuf runtime installed beside them. protoc names the modules
`geokv.v1.*`; the imports between them are rewritten to `geokv_client._gen.geokv.v1.*`, so
the package does not claim a top-level `geokv` module.
"""

import argparse
import pathlib
import re
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROTOS = ["geokv/v1/kv.proto", "geokv/v1/cluster.proto", "geokv/v1/admin.proto"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", type=pathlib.Path, default=HERE.parent.parent / "proto",
                        help="the folder holding geokv/v1/*.proto (default: the repository's proto/)")
    args = parser.parse_args()
    try:
        from grpc_tools import protoc
    except ImportError:
        print("grpcio-tools is not installed: pip install grpcio-tools", file=sys.stderr)
        return 1
    for p in PROTOS:
        if not (args.proto / p).is_file():
            print(f"{args.proto / p} not found; pass --proto", file=sys.stderr)
            return 1
    out = HERE / "geokv_client" / "_gen"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{args.proto}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *PROTOS])
    if code != 0:
        print(f"protoc failed ({code})", file=sys.stderr)
        return code
    for d in [out, out / "geokv", out / "geokv" / "v1"]:
        (d / "__init__.py").touch()
    for f in (out / "geokv" / "v1").glob("*.py"):
        text = f.read_text()
        text = re.sub(r"^from geokv\.v1 import", "from geokv_client._gen.geokv.v1 import", text, flags=re.M)
        f.write_text(text)
    print(f"generated {', '.join(sorted(f.name for f in (out / 'geokv' / 'v1').glob('*_pb2*.py')))} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
