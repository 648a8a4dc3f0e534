#!/usr/bin/env bash
# Builds the demo's images locally, with no registry: `geokv:local` (the geokv binary and the
# shared libraries it links, imported as a root filesystem) and, if Debian's prometheus is
# installed, `geokv-prometheus:local` (its static binary and web assets). On a machine that can
# pull images, `docker build -f deploy/Dockerfile .` builds a geokv image from public bases.
#
#   deploy/image.sh [BINARY]    default: a release build (cargo build --release -p geokv)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-}
if [ -z "$BIN" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/geokv-target}"
  cargo build --release -q -p geokv
  BIN="$CARGO_TARGET_DIR/release/geokv"
fi
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/usr/local/bin" "$ROOT/tmp" "$ROOT/data" "$ROOT/etc/geokv"
chmod 1777 "$ROOT/tmp"
cp "$BIN" "$ROOT/usr/local/bin/geokv"
# The dynamic loader and every library the binary links (libc, libstdc++, libgcc_s, libm).
for lib in $(ldd "$BIN" | awk '/=> \// {print $3} $1 ~ /^\/lib/ {print $1}'); do
  cp --parents -L "$lib" "$ROOT"
done
tar -C "$ROOT" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/geokv"]' \
  --change 'WORKDIR /data' \
  --change 'EXPOSE 7400/tcp 7500/tcp 7500/udp 9464/tcp' \
  - geokv:local >/dev/null
echo "built geokv:local from $BIN"

if command -v prometheus >/dev/null; then
  PROM=$(mktemp -d)
  trap 'rm -rf "$ROOT" "$PROM"' EXIT
  mkdir -p "$PROM/bin" "$PROM/prometheus" "$PROM/tmp"
  cp "$(command -v prometheus)" "$PROM/bin/prometheus"
  for lib in $(ldd "$(command -v prometheus)" 2>/dev/null | awk '/=> \// {print $3} $1 ~ /^\/lib/ {print $1}'); do
    cp --parents -L "$lib" "$PROM"
  done
  tar -C "$PROM" -c . | docker import \
    --change 'ENTRYPOINT ["/bin/prometheus"]' \
    --change 'WORKDIR /prometheus' \
    - geokv-prometheus:local >/dev/null
  echo "built geokv-prometheus:local from $(command -v prometheus)"
fi
