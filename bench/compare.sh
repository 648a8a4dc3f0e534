#!/usr/bin/env bash
# geokv side by side with Redis, in one run on this machine (see docs/benchmarks.md).
#
#   bench/compare.sh [--quick] [--out FILE]
#
# Starts redis-server (Debian's package, installed if missing) on a free loopback port without
# persistence and runs redis-benchmark (SET/GET, 50 clients, 256-byte values, with and without
# pipelining 16), and again with `appendonly yes, appendfsync always` (SET: the
# durability-matched peer of geokv's fsynced PUT); then geokv in release mode: one node
# (closed loop, and PUT paced at PACED_RATE), the same node at SCALE_RECORDS keys (GET, PUT,
# bytes on disk per key), one region of 3 nodes at QUORUM (bulk load by BatchWrite, closed
# loop, and PUT paced), and 3
# regions of 3 nodes with emulated WAN links (writes in every region, replication on, lag
# probes eu-west -> us-east, deltas shipped per write and destination), each driven by
# `geokv bench`; the one node (GET) and the region (QUORUM PUT) run again with TLS on every
# port and link and a client certificate, compared with their plaintext runs. Each group's
# nodes' resident memory is taken after its runs, and each run's CPU time of the nodes (the
# table's "cpu us/op": a cost per operation that a noisy machine changes less than ops/s).
# Prints a table with geokv/Redis ratios and writes every figure as JSON (default
# bench/results/latest.json).
# Environment: DURATION (s per geokv run, default 10), CLIENTS (50), VALUE (256),
# RECORDS (100000), SCALE_RECORDS (1000000), PACED_RATE (1000 writes/s), STEADY_RATE (300),
# CARGO_TARGET_DIR (default $HOME/.cache/geokv-target).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
OUT="$ROOT/bench/results/latest.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bench/compare.sh [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-50}
VALUE=${VALUE:-256}
RECORDS=${RECORDS:-100000}
REDIS_N=${REDIS_N:-500000}
SCALE_RECORDS=${SCALE_RECORDS:-1000000}
PACED_RATE=${PACED_RATE:-1000}
if [ "$QUICK" = 1 ]; then DURATION=2; RECORDS=5000; REDIS_N=50000; SCALE_RECORDS=20000; fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/geokv-target}"
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
echo "== building geokv (release)"
cargo build --release -q -p geokv
BIN="$CARGO_TARGET_DIR/release/geokv"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
# record NAME JSON: one line per measurement.
record() { python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "result": json.loads(sys.argv[2])}))' "$1" "$2" >> "$RESULTS"; }

# ---------------------------------------------------------------- Redis
echo "== redis"
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --logfile "$WORK/redis.log" &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_bench() { # NAME ARGS...: redis-benchmark --csv into JSON rows
  local name=$1; shift
  redis-benchmark -p "$RP" -c "$CLIENTS" -d "$VALUE" -r "$RECORDS" --csv "$@" > "$WORK/$name.csv"
  record "$name" "$(python3 - "$WORK/$name.csv" <<'PY'
import csv, json, sys
rows = list(csv.reader(open(sys.argv[1])))
head, out = rows[0], {}
for r in rows[1:]:
    d = dict(zip(head, r))
    out[d["test"]] = {"rps": float(d["rps"]), "p50_ms": float(d["p50_latency_ms"]), "p99_ms": float(d["p99_latency_ms"])}
print(json.dumps(out))
PY
)"
}
redis_bench redis -n "$REDIS_N" -t set,get
redis_bench redis_p16 -n $((REDIS_N * 4)) -t set,get -P 16
redis-server --version | head -1 > "$WORK/redis.version"
# The durability-matched peer: every write in the append-only file, fsynced before the answer.
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
mkdir -p "$WORK/redis-aof"
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
  --dir "$WORK/redis-aof" --daemonize no --logfile "$WORK/redis-aof.log" &
PIDS=($!)
for _ in $(seq 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_bench redis_aof -n $((REDIS_N / 5)) -t set

# ---------------------------------------------------------------- geokv
# start_node DIR CONFIG_TEXT: starts `geokv server`, waits for its address.
start_node() {
  local dir=$1
  mkdir -p "$dir"
  printf '%s\n' "$2" > "$dir/geokv.toml"
  RUST_LOG=warn "$BIN" server --config "$dir/geokv.toml" > "$dir/out" 2> "$dir/err" &
  PIDS+=($!)
  for _ in $(seq 600); do grep -q "geokv listening" "$dir/out" 2>/dev/null && return 0; sleep 0.1; done
  echo "node in $dir did not start:" >&2; cat "$dir/err" >&2; exit 1
}
# cpu_ticks: CPU time (user + system, clock ticks) used so far by the geokv nodes running now.
cpu_ticks() {
  local t=0 f
  for p in "${PIDS[@]:1}"; do
    f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
    t=$((t + ${f% *} + ${f#* }))
  done
  echo "$t"
}
# gbench NAME ARGS...: geokv bench --json, plus the CPU seconds the nodes used during it (load
# phase included), so that a row's server cost per operation is known even when the machine is
# noisy (server_cpu_s; the report divides it by the operations of rows without a load phase).
gbench() {
  local name=$1; shift
  echo "   $name"
  local before out after
  before=$(cpu_ticks)
  out=$("$BIN" --json "$@" --value-size "$VALUE" --concurrency "$CLIENTS" --duration "${DUR:-$DURATION}" --progress 0)
  after=$(cpu_ticks)
  record "$name" "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["server_cpu_s"]=int(sys.argv[2])/int(sys.argv[3]); print(json.dumps(d))' \
    "$out" "$((after - before))" "$(getconf CLK_TCK)")"
}
# memory NAME: the resident memory (MB) of every geokv node running now (Redis is PIDS[0]).
memory() {
  local rss=()
  for p in "${PIDS[@]:1}"; do
    kill -0 "$p" 2>/dev/null && rss+=("$(( $(ps -o rss= -p "$p") / 1024 ))")
  done
  record "$1" "{\"rss_mb\": [$(IFS=,; echo "${rss[*]}")]}"
}
# disk NAME DIR KEYS: bytes on disk per key of a node's data directory, as it is after the runs
# (SST files, the WAL and the change log included).
disk() {
  local bytes; bytes=$(du -sb "$2" | cut -f1)
  record "$1" "{\"bytes\": $bytes, \"keys\": $3, \"bytes_per_key\": $((bytes / $3))}"
}

# start_single DIR: one plaintext node (default storage: sync = true) in DIR; sets E.
start_single() {
  local p; p=$(free_port)
  start_node "$1" "node_id = 1
listen = \"127.0.0.1:$p\"
data_dir = \"$1/data\""
  E="http://127.0.0.1:$p"
}

echo "== geokv, one node (storage.sync = true)"
start_single "$WORK/single"
DUR=1 gbench single_load --endpoint "$E" bench --workload c --distribution uniform --records "$RECORDS"
gbench single_get --endpoint "$E" bench --workload c --distribution uniform --records "$RECORDS" --no-load
gbench single_put --endpoint "$E" bench --workload update --distribution uniform --records "$RECORDS" --no-load
gbench single_batch100 --endpoint "$E" bench --workload update --distribution uniform --records "$RECORDS" --no-load --batch 100
gbench single_put_paced --endpoint "$E" bench --workload update --distribution uniform --records "$RECORDS" --no-load --rate "$PACED_RATE"
disk single_disk "$WORK/single/data" "$RECORDS"
memory single_memory
kill "${PIDS[-1]}" 2>/dev/null || true

echo "== geokv, one node at $SCALE_RECORDS keys"
start_single "$WORK/scale"
gbench scale_get --endpoint "$E" bench --workload c --distribution uniform --records "$SCALE_RECORDS"
gbench scale_put --endpoint "$E" bench --workload update --distribution uniform --records "$SCALE_RECORDS" --no-load
disk scale_disk "$WORK/scale/data" "$SCALE_RECORDS"
memory scale_memory
kill "${PIDS[-1]}" 2>/dev/null || true

# certs DIR TOPOLOGY: a CA, node certificates and the client certificate `bench` in DIR; sets
# TLS_FLAGS (the client's --ca/--cert/--key).
certs() {
  "$BIN" certs create --topology "$2" --dir "$1" --client bench --days 2 > /dev/null
  TLS_FLAGS=(--ca "$1/ca.pem" --cert "$1/client-bench.pem" --key "$1/client-bench.key")
}
echo "== geokv, one node, TLS"
P=$(free_port)
mkdir -p "$WORK/single-tls"
printf '[[regions]]\nname = "local"\nlocation = [0.0, 0.0]\njurisdiction = "xx"\nreplication_factor = 1\n[[nodes]]\nid = 1\nregion = "local"\nclient_addr = "127.0.0.1:%s"\npeer_addr = "127.0.0.1:%s"\n' \
  "$P" "$(free_port)" > "$WORK/single-tls/topology.toml"
certs "$WORK/single-tls/certs" "$WORK/single-tls/topology.toml"
start_node "$WORK/single-tls" "node_id = 1
listen = \"127.0.0.1:$P\"
data_dir = \"$WORK/single-tls/data\"
[tls]
ca = \"$WORK/single-tls/certs/ca.pem\"
cert = \"$WORK/single-tls/certs/node-1.pem\"
key = \"$WORK/single-tls/certs/node-1.key\""
gbench single_get_tls "${TLS_FLAGS[@]}" --endpoint "https://127.0.0.1:$P" bench --workload c --distribution uniform --records "$RECORDS"
kill "${PIDS[-1]}" 2>/dev/null || true

# topology REGIONS... : writes $WORK/topo-<n>/topology.toml with 3 nodes per region, starts them.
# Sets NODES (client endpoints), PEERS (peer addresses), in node order.
start_regions() {
  local dir=$1; shift
  mkdir -p "$dir"
  local topo="$dir/topology.toml" id=0 regions=("$@")
  : > "$topo"
  for r in "${regions[@]}"; do
    IFS=: read -r name lon lat <<< "$r"
    printf '[[regions]]\nname = "%s"\nlocation = [%s, %s]\njurisdiction = "%s"\nreplication_factor = 3\n\n' \
      "$name" "$lon" "$lat" "${name%%-*}" >> "$topo"
  done
  NODES=(); PEERS=(); REGION_OF=()
  for r in "${regions[@]}"; do
    IFS=: read -r name _ _ <<< "$r"
    for _ in 1 2 3; do
      id=$((id + 1))
      local c p; c=$(free_port); p=$(free_port)
      printf '[[nodes]]\nid = %d\nregion = "%s"\nclient_addr = "127.0.0.1:%s"\npeer_addr = "127.0.0.1:%s"\n\n' \
        "$id" "$name" "$c" "$p" >> "$topo"
      NODES+=("http://127.0.0.1:$c"); PEERS+=("127.0.0.1:$p"); REGION_OF+=("$name")
    done
  done
  if [ "${TLS:-0}" = 1 ]; then certs "$dir/certs" "$topo"; fi
  for i in $(seq 1 "$id"); do
    # Plaintext says so (a node of several refuses to start otherwise); TLS names its files.
    local insecure="insecure = true" tls=""
    if [ "${TLS:-0}" = 1 ]; then
      insecure=""
      tls="[tls]
ca = \"$dir/certs/ca.pem\"
cert = \"$dir/certs/node-$i.pem\"
key = \"$dir/certs/node-$i.key\"
gossip_key = \"$dir/certs/gossip.key\""
    fi
    start_node "$dir/node-$i" "node_id = $i
data_dir = \"$dir/node-$i/data\"
topology = \"$topo\"
$insecure
[replication]
emulate_wan = ${EMULATE_WAN:-false}
$tls"
  done
}
join() { local IFS=,; echo "$*"; }

echo "== geokv, one region of 3 nodes, QUORUM"
start_regions "$WORK/region" "eu-west:-6.26:53.35"
EPS=$(join "${NODES[@]}")
# Bulk load through the region: BatchWrites of 100 keys at QUORUM, four at once per node.
DUR=1 gbench region_load --consistency quorum bench --endpoints "$EPS" --workload c --distribution uniform --records "$RECORDS"
gbench region_get --consistency quorum bench --endpoints "$EPS" --workload c --distribution uniform --records "$RECORDS" --no-load
gbench region_put --consistency quorum bench --endpoints "$EPS" --workload update --distribution uniform --records "$RECORDS" --no-load
gbench region_put_paced --consistency quorum bench --endpoints "$EPS" --workload update --distribution uniform --records "$RECORDS" --no-load --rate "$PACED_RATE"
memory region_memory
for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
PIDS=("${PIDS[0]}")  # only Redis is left running

echo "== geokv, one region of 3 nodes, QUORUM, TLS on every port and link"
TLS=1 start_regions "$WORK/region-tls" "eu-west:-6.26:53.35"
EPS=$(join "${NODES[@]}")
gbench region_put_tls "${TLS_FLAGS[@]}" --consistency quorum bench --endpoints "$EPS" --workload update --distribution uniform --records "$RECORDS" --no-load
for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
PIDS=("${PIDS[0]}")

echo "== geokv, 3 regions x 3 nodes, emulated WAN (Dublin, Ashburn, Singapore), writes local"
EMULATE_WAN=true start_regions "$WORK/regions" "eu-west:-6.26:53.35" "us-east:-77.49:39.04" "ap-southeast:103.82:1.35"
EPS=$(join "${NODES[@]}")
EU_PEERS=$(join "${PEERS[@]:0:3}")
gbench regions_put --consistency quorum bench --endpoints "$EPS" --workload update --distribution uniform \
  --records "$RECORDS" --no-load --lag-endpoint "${NODES[3]}" --repl-peers "$EU_PEERS"
# Lag under a steady load the nine nodes sustain here, then at the issue's 5,000 writes/s.
gbench regions_put_steady --consistency quorum bench --endpoints "$EPS" --workload update --distribution uniform \
  --records "$RECORDS" --no-load --rate "${STEADY_RATE:-300}" --lag-endpoint "${NODES[3]}" --repl-peers "$EU_PEERS"
gbench regions_put_paced --consistency quorum bench --endpoints "$EPS" --workload update --distribution uniform \
  --records "$RECORDS" --no-load --rate "$PACED_RATE" --lag-endpoint "${NODES[3]}" --repl-peers "$EU_PEERS"
memory regions_memory
LINK_MS=$("$BIN" --json admin repl-status --peer "${PEERS[0]}" | python3 -c 'import json,sys; d=json.load(sys.stdin); print([x for x in d["destinations"] if x["destination"]=="us-east"][0]["link"]["delay_ms"])')

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$LINK_MS" "$(cat "$WORK/redis.version")" "$CLIENTS" "$VALUE" "$DURATION" "$RECORDS" "$SCALE_RECORDS" "$PACED_RATE" <<'PY'
import json, sys, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
r = {x["name"]: x["result"] for x in rows}
out_path, link_ms, redis_version, clients, value, duration = sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
records, scale, paced = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
def op(name, kind):
    return next(o for o in r[name]["ops"] if o["op"] == kind)
redis_get, redis_set = r["redis"]["GET"]["rps"], r["redis"]["SET"]["rps"]
redis_set_p16 = r["redis_p16"]["SET"]["rps"]
redis_aof = r["redis_aof"]["SET"]["rps"]
table = []
def add(system, workload, rps, p50, p99, p999, base, base_name, cpu_us=None):
    table.append({"system": system, "workload": workload, "ops_per_sec": rps, "p50_ms": p50, "p99_ms": p99,
                  "p999_ms": p999, "ratio": (rps / base) if base else None, "compared_with": base_name,
                  "server_cpu_us_per_op": cpu_us})
def cpu_per_op(name):
    """The nodes' CPU microseconds per operation of a run without a load phase (all nodes
    together: a region's figure is the cost of one operation to the whole region)."""
    x = r[name]
    if x.get("load_s") or "server_cpu_s" not in x:
        return None
    ops = sum(o["count"] for o in x["ops"])
    return x["server_cpu_s"] * 1e6 / ops if ops else None
for name, test, pipe in [("redis", "GET", ""), ("redis", "SET", ""), ("redis_p16", "GET", " -P 16"), ("redis_p16", "SET", " -P 16"), ("redis_aof", "SET", " (AOF fsync always)")]:
    x = r[name][test]
    add("redis", test + pipe, x["rps"], x["p50_ms"], x["p99_ms"], None, None, None)
def g(system, workload, name, kind, base, base_name, keys=False):
    o = op(name, kind)
    rate = o["keys_per_sec"] if keys else o["ops_per_sec"]
    cpu = cpu_per_op(name)
    if keys and cpu:
        cpu = cpu * o["ops_per_sec"] / o["keys_per_sec"]
    add(system, workload, rate, o["p50_ms"], o["p99_ms"], o["p999_ms"], base, base_name, cpu)
g("geokv 1 node", "GET (read)", "single_get", "read", redis_get, "redis GET")
g("geokv 1 node", "PUT (update, fsync)", "single_put", "update", redis_aof, "redis SET AOF always")
g("geokv 1 node", "BatchWrite x100, keys/s", "single_batch100", "update", redis_set_p16, "redis SET -P 16", keys=True)
g("geokv 1 node", f"PUT paced at {paced}/s", "single_put_paced", "update", None, None)
g(f"geokv 1 node, {scale:,} keys", "GET (read)", "scale_get", "read", op("single_get", "read")["ops_per_sec"], f"same at {records:,} keys")
g(f"geokv 1 node, {scale:,} keys", "PUT (update, fsync)", "scale_put", "update", op("single_put", "update")["ops_per_sec"], f"same at {records:,} keys")
load = r["region_load"]
add("geokv 3 nodes QUORUM", "bulk load, BatchWrite x100, keys/s", load["records"] / load["load_s"], None, None, None, None, None)
g("geokv 3 nodes QUORUM", "GET (read)", "region_get", "read", redis_get, "redis GET")
g("geokv 3 nodes QUORUM", "PUT (update)", "region_put", "update", redis_set, "redis SET")
g("geokv 3 nodes QUORUM", f"PUT paced at {paced}/s", "region_put_paced", "update", None, None)
single_get = op("single_get", "read")["ops_per_sec"]
region_put = op("region_put", "update")["ops_per_sec"]
g("geokv 1 node TLS", "GET (read)", "single_get_tls", "read", single_get, "geokv 1 node GET plaintext")
g("geokv 3 nodes TLS", "QUORUM PUT (update)", "region_put_tls", "update", region_put, "geokv 3 nodes PUT plaintext")
g("geokv 3 regions x 3", "PUT, writes local", "regions_put", "update", redis_set, "redis SET")
g("geokv 3 regions x 3", "PUT paced (steady)", "regions_put_steady", "update", None, None)
g("geokv 3 regions x 3", f"PUT paced at {paced}/s", "regions_put_paced", "update", None, None)
repl = {k: r[k].get("replication") for k in ["regions_put", "regions_put_steady", "regions_put_paced"]}
memory = {k: r[k]["rss_mb"] for k in ["single_memory", "scale_memory", "region_memory", "regions_memory"]}
disk = {k: r[k] for k in ["single_disk", "scale_disk"]}
result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "redis": redis_version},
          "settings": {"clients": int(clients), "value_bytes": int(value), "duration_s": float(duration),
                       "records": records, "scale_records": scale, "paced_rate": paced},
          "table": table, "replication": repl, "memory_mb": memory, "disk": disk,
          "wan_delay_eu_us_ms": link_ms, "raw": r}
json.dump(result, open(out_path, "w"), indent=2)
fmt = lambda v, f="{:.3f}": "" if v is None else f.format(v)
print(f"\n{'system':<22} {'workload':<26} {'ops/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'cpu us/op':>9}  ratio")
for t in table:
    ratio = "" if t["ratio"] is None else f"{t['ratio']:.2f}x {t['compared_with']}"
    print(f"{t['system']:<22} {t['workload']:<26} {t['ops_per_sec']:>12,.0f} {fmt(t['p50_ms']):>8} {fmt(t['p99_ms']):>8} {fmt(t['p999_ms']):>9} {fmt(t['server_cpu_us_per_op'], '{:.0f}'):>9}  {ratio}")
for k, v in repl.items():
    if v:
        print(f"{k}: eu-west -> us-east lag p50 {v.get('lag_p50_ms', 0):.1f} ms, p99 {v.get('lag_p99_ms', 0):.1f} ms "
              f"(link {link_ms:.0f} ms one way; {v.get('lag_probes', 0)} probes, {v.get('lag_timeouts', 0)} unseen, {v.get('lag_probes_skipped', 0)} skipped while 4 were pending), "
              f"{v.get('deltas_shipped_per_sec', 0):,.0f} deltas/s shipped by eu-west ({v.get('deltas_per_write_and_destination', 0):.2f} per write and destination), compression {v.get('compression_ratio', 0):.2f}x")
for k, v in memory.items():
    print(f"{k}: resident memory per node {', '.join(f'{m} MB' for m in v)}")
for k, v in disk.items():
    print(f"{k}: {v['bytes']:,} bytes on disk for {v['keys']:,} keys, {v['bytes_per_key']} bytes per key")
print(f"\nJSON: {out_path}")
PY
