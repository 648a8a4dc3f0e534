"""The Python client against live nodes: GEOKV_ENDPOINTS (comma-separated nodes of one region,
QUORUM) and GEOKV_DEAD_ENDPOINT (an address where nothing listens). tests/python_client.rs
starts the nodes and runs these; by hand:

    GEOKV_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002 GEOKV_DEAD_ENDPOINT=127.0.0.1:1 \\
        python3 -m unittest discover -s clients/python/tests -v
"""

import os
import random
import unittest
import uuid

import grpc

import geokv_client as g

ENDPOINTS = [e for e in os.environ.get("GEOKV_ENDPOINTS", "").split(",") if e]
# Port 1: nothing listens there.
DEAD = os.environ.get("GEOKV_DEAD_ENDPOINT", "127.0.0.1:1")


def _pem(var: str):
    path = os.environ.get(var)
    return open(path, "rb").read() if path else None


def client(endpoints, **kw) -> g.Client:
    """A client with the TLS files GEOKV_TLS_CA, GEOKV_TLS_CERT and GEOKV_TLS_KEY, if set."""
    return g.Client(endpoints, root_certificates=_pem("GEOKV_TLS_CA"),
                    certificate_chain=_pem("GEOKV_TLS_CERT"), private_key=_pem("GEOKV_TLS_KEY"), **kw)


def key(name: str) -> bytes:
    """A key of this run only (the tests share the nodes)."""
    return f"py/{uuid.uuid4().hex}/{name}".encode()


@unittest.skipUnless(ENDPOINTS, "GEOKV_ENDPOINTS is not set")
class Operations(unittest.TestCase):
    def setUp(self):
        self.db = client(ENDPOINTS, consistency="quorum", timeout=10)

    def tearDown(self):
        self.db.close()

    def test_binary_values_round_trip_with_version_and_ttl(self):
        k, v = key("bin"), bytes(range(256)) * 64 + os.urandom(4096)
        version = self.db.put(k, v, ttl_ms=3_600_000)
        e = self.db.get(k)
        self.assertEqual(e.value, v)
        self.assertEqual(e.version, version)
        self.assertTrue(3_000_000 < e.ttl_remaining_ms <= 3_600_000, e.ttl_remaining_ms)
        self.assertTrue(self.db.delete(k))
        self.assertIsNone(self.db.get(k))
        self.assertFalse(self.db.delete(k))

    def test_expire_and_persist_change_only_the_ttl(self):
        c = key("ttl-counter")
        self.assertFalse(self.db.expire(c, 60_000), "an absent key stays absent")
        self.assertIsNone(self.db.get(c))
        self.db.increment(c, 4)
        self.assertTrue(self.db.expire(c, 60_000))
        e = self.db.get(c)
        self.assertEqual(e.value, 4)
        self.assertTrue(50_000 < e.ttl_remaining_ms <= 60_000, e.ttl_remaining_ms)
        self.assertTrue(self.db.persist(c))
        self.assertIsNone(self.db.get(c).ttl_remaining_ms)
        [r] = self.db.batch_write([g.Op.expire(c, 30_000)])
        self.assertTrue(r.expire.existed)
        self.assertTrue(self.db.get(c).ttl_remaining_ms <= 30_000)

    def test_str_keys_and_values_are_utf8(self):
        k = key("ключ")
        self.db.put(k.decode(), "värde")
        self.assertEqual(self.db.get(k).value, "värde".encode())

    def test_an_increment_sent_again_with_its_request_id_counts_once(self):
        c = key("once")
        rid = g.new_request_id()
        self.assertEqual(self.db.increment(c, 5, request_id=rid), 5)
        self.assertEqual(self.db.increment(c, 5, request_id=rid), 5)
        self.assertEqual(self.db.increment(c, 1), 6)
        self.assertEqual(self.db.get(c).value, 6)
        with self.assertRaises(g.GeokvError) as cm:
            self.db.increment(c, 4, request_id=rid)
        self.assertEqual(cm.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(cm.exception.reason, "REQUEST_ID_REUSED")
        with self.assertRaises(ValueError):
            self.db.increment(c, 1, request_id=b"short")
        results = self.db.batch_write([g.Op.increment(c, 2, request_id=rid2) for rid2 in [g.new_request_id()] * 2])
        self.assertEqual([r.increment.value for r in results], [8, 8])

    def test_an_append_sent_again_with_its_request_id_applies_once(self):
        r = key("append-once")
        rid = g.new_request_id()
        self.assertEqual(self.db.append(r, b"a;", request_id=rid), 2)
        self.assertEqual(self.db.append(r, b"a;", request_id=rid), 2)
        self.assertEqual(self.db.append(r, b"b;"), 4)
        self.assertEqual(self.db.append(r, b"a;", request_id=rid), 4)
        self.assertEqual(self.db.get(r).value, b"a;b;")
        with self.assertRaises(g.GeokvError) as cm:
            self.db.append(r, b"c;", request_id=rid)
        self.assertEqual(cm.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(cm.exception.reason, "REQUEST_ID_REUSED")
        with self.assertRaises(ValueError):
            self.db.append(r, b"x", request_id=b"short")
        rid2 = g.new_request_id()
        results = self.db.batch_write([g.Op.append(r, b"d;", request_id=rid2)] * 2)
        self.assertEqual([x.append.length for x in results], [6, 6])
        self.assertEqual(self.db.get(r).value, b"a;b;d;")

    def test_counters_appends_and_sets(self):
        c, r, s = key("c"), key("r"), key("s")
        self.assertEqual(self.db.increment(c, 5), 5)
        self.assertEqual(self.db.increment(c, -7), -2)
        self.assertEqual(self.db.get(c).value, -2)
        self.assertEqual(self.db.append(r, b"ab"), 2)
        self.assertEqual(self.db.append(r, b"c"), 3)
        self.assertEqual(self.db.get(r).value, b"abc")
        ch = self.db.set_add(s, [b"a", b"b", "c"])
        self.assertEqual((ch.changed, ch.size), (3, 3))
        ch = self.db.set_remove(s, [b"a", b"zz"])
        self.assertEqual((ch.changed, ch.size), (1, 2))
        self.assertEqual(self.db.members(s), frozenset({b"b", b"c"}))
        self.assertEqual(self.db.get(s).value, frozenset({b"b", b"c"}))
        self.assertIsNone(self.db.members(key("none")))

    def test_compare_and_swap(self):
        k = key("lock")
        ok, cur = self.db.compare_and_swap(k, b"me", expect_absent=True)
        self.assertTrue(ok)
        ok, cur = self.db.compare_and_swap(k, b"you", expect_absent=True)
        self.assertFalse(ok)
        self.assertEqual(cur.value, b"me")
        ok, _ = self.db.compare_and_swap(k, b"you", expected=cur.version)
        self.assertTrue(ok)
        self.assertEqual(self.db.get(k).value, b"you")
        with self.assertRaises(ValueError):
            self.db.compare_and_swap(k, b"x")

    def test_scan_follows_pages_in_key_order(self):
        prefix = key("scan")
        keys = [prefix + f"/{i:03}".encode() for i in range(25)]
        shuffled = keys[:]
        random.shuffle(shuffled)
        results = self.db.batch_write([g.Op.put(k, k[-3:]) for k in shuffled])
        self.assertTrue(all(not isinstance(r, g.GeokvError) for r in results), results)
        got = list(self.db.scan(prefix, page_size=7))
        self.assertEqual([e.key for e in got], keys)
        self.assertEqual([e.value for e in got], [k[-3:] for k in keys])
        self.assertEqual([e.key for e in self.db.scan(prefix, keys_only=True)], keys)
        self.assertEqual([e.value for e in self.db.batch_get([keys[3], key("absent")]) if e], [b"003"])

    def test_batch_items_fail_alone(self):
        k, c = key("reg"), key("cnt")
        self.db.put(k, b"x")
        results = self.db.batch_write([g.Op.increment(c, 2), g.Op.increment(k, 1), g.Op.set_add(key("s"), [b"m"])])
        self.assertEqual(results[0].increment.value, 2)
        self.assertIsInstance(results[1], g.GeokvError)
        self.assertEqual(results[1].code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(results[1].reason, "WRONG_TYPE")
        self.assertEqual(results[2].set_change.size, 1)


@unittest.skipUnless(ENDPOINTS, "GEOKV_ENDPOINTS is not set")
class Errors(unittest.TestCase):
    def setUp(self):
        self.db = client(ENDPOINTS, consistency="quorum", timeout=10)

    def tearDown(self):
        self.db.close()

    def test_wrong_type_is_a_failed_precondition_and_changes_nothing(self):
        k = key("typed")
        self.db.put(k, b"text")
        with self.assertRaises(g.GeokvError) as cm:
            self.db.increment(k, 1)
        e = cm.exception
        self.assertEqual(e.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(e.reason, "WRONG_TYPE")
        self.assertIsNone(e.retry_after)
        self.assertIn("counter", e.message)
        self.assertFalse(e.retryable)
        self.assertIn(e.node, ENDPOINTS)
        self.assertEqual(self.db.get(k).value, b"text")

    def test_oversized_key_is_an_invalid_argument(self):
        with self.assertRaises(g.GeokvError) as cm:
            self.db.put(b"k" * 100_000, b"v")
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(cm.exception.reason, "TOO_LARGE")
        self.assertIn("max_key_bytes", cm.exception.message)

    def test_bad_arguments_are_refused_before_sending(self):
        with self.assertRaises(TypeError):
            self.db.put(42, b"v")
        with self.assertRaises(ValueError):
            g.Client([])
        with self.assertRaises(ValueError):
            g.Client(ENDPOINTS, consistency="most")

    def test_no_reachable_node_is_unavailable_never_sent_within_the_timeout(self):
        import time
        db = client([DEAD], timeout=1)
        started = time.monotonic()
        with self.assertRaises(g.GeokvError) as cm:
            db.increment(key("c"), 1)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertTrue(cm.exception.never_sent)
        self.assertTrue(cm.exception.retryable)
        db.close()


@unittest.skipUnless(ENDPOINTS, "GEOKV_ENDPOINTS is not set")
class Failover(unittest.TestCase):
    def test_requests_go_past_a_node_that_is_down(self):
        db = client([DEAD] + ENDPOINTS, consistency="quorum", timeout=10)
        self.assertEqual(db.current, DEAD)
        c = key("failover")
        for i in range(20):
            self.assertEqual(db.increment(c, 1), i + 1)
            db.put(key(f"p{i}"), b"v")
        self.assertIn(db.current, ENDPOINTS)
        self.assertEqual(db.get(c).value, 20)
        db.close()


if __name__ == "__main__":
    unittest.main()
