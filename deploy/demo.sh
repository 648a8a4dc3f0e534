#!/usr/bin/env bash
# The multi-region docker-compose demo (docs/deploy.md).
#
#   deploy/demo.sh up         build the images locally, start 3 regions x 3 nodes, wait healthy
#   deploy/demo.sh tour       writes in every region, converged values, residency, a partition
#                             of ap-southeast with the lag it causes, the heal and the drain
#   deploy/demo.sh partition  disconnect ap-southeast's nodes from the WAN network
#   deploy/demo.sh heal       reconnect them
#   deploy/demo.sh status     the deployment table and lag matrix
#   deploy/demo.sh down       stop and remove everything, data volumes included
#
# Environment: GEOKV_BIN (binary to put in the image; default a release build),
# GEOKV_MONITORING=1 (also start Prometheus with the alert rules), GEOKV_PROJECT (compose
# project name, default geokv).
set -euo pipefail
cd "$(dirname "$0")"
PROJECT=${GEOKV_PROJECT:-geokv}
COMPOSE=(docker-compose -p "$PROJECT" -f docker-compose.yml)
WAN="${PROJECT}_wan"
AP_NODES=(7 8 9)

# g NODE ARGS...: the geokv CLI inside node NODE's container, against that node (over TLS,
# as the `demo` client: the container's GEOKV_CA, GEOKV_CERT and GEOKV_KEY).
g() {
  local n=$1
  shift
  docker exec "geokv-node$n" /usr/local/bin/geokv --endpoint https://127.0.0.1:7400 "$@"
}
# p NODE ARGS...: the geokv CLI inside node NODE's container, against its peer port, which only
# the deployment's nodes may call: it presents the node's own certificate.
p() {
  local n=$1
  shift
  docker exec "geokv-node$n" /usr/local/bin/geokv --cert "/certs/node-$n.pem" --key "/certs/node-$n.key" "$@"
}
region_of() { case $1 in 1|2|3) echo eu-west ;; 4|5|6) echo us-east ;; *) echo ap-southeast ;; esac; }
wan_ip() { echo "10.30.0.$((10 + $1))"; }
step() { printf '\n== %s\n' "$*"; }

# until_ok SECONDS CMD...: retries CMD every second until it succeeds.
until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for: $*" >&2; "$@" || true; return 1; fi
    sleep 1
  done
}

healthy() {
  for n in $(seq 1 9); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "geokv-node$n" 2>/dev/null)" = healthy ] || return 1
  done
}

all_alive() {
  local s
  s=$(p 1 --json status --peer 127.0.0.1:7500) || return 1
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if len(d["nodes"])==9 and all(n["reachable"] and n["health"]=="alive" for n in d["nodes"]) else 1)' "$s"
}

up() {
  if [ -z "${GEOKV_SKIP_BUILD:-}" ]; then ./image.sh ${GEOKV_BIN:+"$GEOKV_BIN"}; fi
  if [ "${GEOKV_MONITORING:-}" = 1 ]; then
    "${COMPOSE[@]}" --profile monitoring up -d
  else
    "${COMPOSE[@]}" up -d
  fi
  until_ok 180 healthy
  until_ok 120 all_alive
  step "up: 3 regions x 3 nodes"
  for n in $(seq 1 9); do
    printf '  node%s  %-13s client %-22s metrics http://%s/\n' "$n" "$(region_of "$n")" \
      "$(docker port "geokv-node$n" 7400 | head -1)" "$(docker port "geokv-node$n" 9464 | head -1)"
  done
  if [ "${GEOKV_MONITORING:-}" = 1 ]; then echo "  prometheus http://$(docker port geokv-prometheus 9090 | head -1)/"; fi
}

status() { p 1 status --peer 127.0.0.1:7500; }

partition() {
  for n in "${AP_NODES[@]}"; do docker network disconnect "$WAN" "geokv-node$n"; done
  echo "ap-southeast (nodes ${AP_NODES[*]}) disconnected from the WAN network"
}

heal() {
  for n in "${AP_NODES[@]}"; do docker network connect --ip "$(wan_ip "$n")" "$WAN" "geokv-node$n"; done
  echo "ap-southeast reconnected to the WAN network"
}

# values NODE: the tour's keys as NODE reads them.
values() {
  local n=$1
  printf 'greeting=%s likes=%s visited=%s' \
    "$(g "$n" --json get tour:greeting | python3 -c 'import json,sys; e=json.load(sys.stdin); print(e["value"]["value"] if e else None)')" \
    "$(g "$n" --json get tour:likes | python3 -c 'import json,sys; e=json.load(sys.stdin); print(e["value"]["value"] if e else None)')" \
    "$(g "$n" --json smembers tour:visited | python3 -c 'import json,sys; print(",".join(sorted(json.load(sys.stdin)["members"])))')"
}
converged() {
  local a b c
  a=$(values 1); b=$(values 4); c=$(values 7)
  [ "$a" = "$b" ] && [ "$b" = "$c" ] && [ "$a" = "$1" ]
}
lag_over() { # lag_over FROM TO MS: the lag matrix shows at least MS from FROM to TO
  p 1 --json status --peer 127.0.0.1:7500 | python3 -c '
import json, sys
d = json.load(sys.stdin)
c = [c for c in d["lags"] if c["origin"] == sys.argv[1] and c["destination"] == sys.argv[2]][0]
sys.exit(0 if c["lag_ms"] >= int(sys.argv[3]) else 1)' "$1" "$2" "$3"
}
drained() {
  p 1 --json status --peer 127.0.0.1:7500 | python3 -c '
import json, sys
d = json.load(sys.stdin)
ok = all(c["nodes_reporting"] > 0 and c["lag_ms"] == 0 and c["backlog_entries"] == 0 for c in d["lags"])
sys.exit(0 if ok else 1)'
}

tour() {
  step "writes are accepted in every region (each at its local node)"
  {
    g 1 put tour:greeting "hello from Dublin"
    g 4 incr tour:likes 5
    g 7 incr tour:likes 7
    g 1 incr tour:likes 1
    for n in 1 4 7; do g "$n" sadd tour:visited "$(region_of "$n")"; done
  } | sed 's/^/  /'
  expect='greeting=hello from Dublin likes=13 visited=ap-southeast,eu-west,us-east'
  until_ok 60 converged "$expect"
  step "converged: every region reads the same register, counter and set"
  for n in 1 4 7; do printf '  %-13s %s\n' "$(region_of "$n")" "$(values "$n")"; done

  step "residency: eu:user: keys stay in the EU (written via Singapore, forwarded), us:phi: only in us-east"
  g 7 put eu:user:42 "Aoife, Dublin"
  echo "  read via Ashburn: $(g 4 get eu:user:42)"
  p 7 residency explain eu:user:42 --peer 127.0.0.1:7500 | sed 's/^/  /'
  if out=$(g 1 put us:phi:7 "record" 2>&1); then echo "a us:phi: key was accepted in eu-west" >&2; exit 1; fi
  echo "  put us:phi:7 via Dublin refused: $(echo "$out" | grep -o 'FailedPrecondition[^.]*' | head -1)"

  step "security: TLS on every port and link; principals get what their roles grant"
  if out=$(docker exec geokv-node1 /usr/local/bin/geokv --ca "" --cert "" --key "" --endpoint http://127.0.0.1:7400 get tour:greeting 2>&1); then
    echo "a plaintext client was served" >&2; exit 1
  fi
  echo "  plaintext client refused: $(echo "$out" | grep -o 'Unauthenticated' | head -1)"
  guest=(--cert /certs/client-guest.pem --key /certs/client-guest.key)
  echo "  guest reads tour:greeting: $(g 1 "${guest[@]}" get tour:greeting)"
  if out=$(g 1 "${guest[@]}" put tour:greeting "defaced" 2>&1); then echo "the guest could write" >&2; exit 1; fi
  echo "  guest put tour:greeting refused: $(echo "$out" | grep -o 'PermissionDenied' | head -1)"

  step "partition: ap-southeast cut off the WAN; both sides keep accepting writes"
  partition
  {
    g 1 incr tour:likes 100
    g 7 incr tour:likes 1000
    g 7 sadd tour:visited offline-in-singapore
  } | sed 's/^/  /'
  until_ok 60 lag_over eu-west ap-southeast 1000
  status | sed 's/^/  /'

  step "heal: the backlog drains and the regions converge"
  heal
  until_ok 120 converged 'greeting=hello from Dublin likes=1113 visited=ap-southeast,eu-west,offline-in-singapore,us-east'
  for n in 1 4 7; do printf '  %-13s %s\n' "$(region_of "$n")" "$(values "$n")"; done
  until_ok 120 drained
  status | sed 's/^/  /'
  echo
  echo "tour complete"
}

down() {
  "${COMPOSE[@]}" --profile monitoring down -v --remove-orphans
}

case "${1:-}" in
  up) up ;;
  tour) tour ;;
  partition) partition ;;
  heal) heal ;;
  status) status ;;
  down) down ;;
  *) echo "usage: deploy/demo.sh up|tour|partition|heal|status|down" >&2; exit 2 ;;
esac
