"""Writes through the Python client while the test kills a node (tests/python_client.rs).

GEOKV_ENDPOINTS lists the region's nodes, the one to be killed first (so it is the node the
client talks to). Prints "ready" once writes are flowing, goes on for GEOKV_OPS more, then
checks: every put and every increment completed (both are retried on another node; each
increment carries a request id, so its attempts count once) and every put reads back; the
counter equals the number of increments. Prints a JSON summary; exits 1 if a check fails.
"""

import json
import os
import sys
import threading
import time
import uuid

import geokv_client as g

ENDPOINTS = [e for e in os.environ["GEOKV_ENDPOINTS"].split(",") if e]
OPS = int(os.environ.get("GEOKV_OPS", "300"))
THREADS = 4

db = g.Client(ENDPOINTS, consistency="quorum", timeout=20)
run = uuid.uuid4().hex
counter = f"kill/{run}/counter"
lock = threading.Lock()
stats = {"acked": 0, "inc_errors": [], "puts": 0, "put_errors": [], "switched_to": None}
done = threading.Event()
written = []


def worker(t: int) -> None:
    i = 0
    while not done.is_set():
        k = f"kill/{run}/{t}/{i}"
        try:
            db.put(k, k.encode())
            with lock:
                written.append(k)
                stats["puts"] += 1
        except g.GeokvError as e:
            with lock:
                stats["put_errors"].append(str(e))
        try:
            db.increment(counter, 1)
            with lock:
                stats["acked"] += 1
        except g.GeokvError as e:
            with lock:
                stats["inc_errors"].append(str(e))
        i += 1


threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
for th in threads:
    th.start()
def wait_for(cond, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with lock:
            if cond():
                return
        if time.monotonic() > deadline:
            done.set()
            print(json.dumps({"timed_out": what, **stats}), flush=True)
            os._exit(1)
        time.sleep(0.01)


wait_for(lambda: stats["puts"] >= 50, 60, "the first 50 puts")
start = stats["puts"]
print("ready", flush=True)
# The test kills the first node now; go on for OPS more puts.
wait_for(lambda: stats["puts"] >= start + OPS or len(stats["put_errors"]) > 20, 120, f"{OPS} more puts")
done.set()
for th in threads:
    th.join()
stats["switched_to"] = db.current
value = db.get(counter).value
missing = [k for k in written if (e := db.get(k)) is None or e.value != k.encode()]
stats.update(counter=value, missing=len(missing))
print(json.dumps(stats), flush=True)
ok = (not stats["put_errors"] and not stats["inc_errors"] and not missing
      and value == stats["acked"] and stats["switched_to"] != ENDPOINTS[0])
sys.exit(0 if ok else 1)
