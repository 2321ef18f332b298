#!/usr/bin/env bash
# Unary RPC latency from a real Python gRPC client (grpcio, the C-core stack) against `baton up`
# on loopback: the client-side half of issue 11's "every unary RPC under 2 ms p99" (the tonic
# client's half is `cargo bench -p baton-tests --bench unary`).
#   bash tests/clients/grpcio-unary.sh [path/to/baton] [--calls N]
# The client lives in a venv under ~/.cache/baton-grpcio/<version>, installed from PyPI with
# every wheel checked by sha256 (grpcio-requirements.txt); stubs are generated from proto/ with
# grpcio-tools' protoc. With the MiniLM weights (bash deploy/minilm.sh) Classify's second row
# runs the embedding classifier; without them it is a rules-only miss.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
baton=""
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then baton=$1; shift; fi
if [ -z "$baton" ]; then
  cargo build --release --quiet -p baton
  baton="$CARGO_TARGET_DIR/release/baton"
fi

version=1.85.1
venv="$HOME/.cache/baton-grpcio/$version"
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/clients/grpcio-requirements.txt "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --require-hashes --only-binary=:all: -r tests/clients/grpcio-requirements.txt
  cp tests/clients/grpcio-requirements.txt "$venv/requirements.txt"
fi

work="$(mktemp -d /tmp/baton-grpcio-XXXXXX)"
mkdir -p "$work/stubs"
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work/stubs" --grpc_python_out="$work/stubs" \
  proto/baton/v1/types.proto proto/baton/v1/events.proto proto/baton/v1/progress.proto proto/baton/v1/services.proto

if minilm_env="$(bash deploy/minilm.sh --env 2>/dev/null)"; then export $minilm_env; fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(port); http=$(port)
cat > "$work/baton.toml" <<TOML
grpc_addr = "127.0.0.1:$grpc"
http_addr = "127.0.0.1:$http"
data_dir = "$work/data"

[nats_server]
port = 0

[agents]
dir = "$repo/agents"

[validation]
policy_dir = "$repo/policies"
TOML
if [ -n "${BATON_MINILM_DIR:-}" ]; then
  printf '\n[decision.embedding]\nmodel_dir = "%s"\n' "$BATON_MINILM_DIR" >> "$work/baton.toml"
fi
"$baton" up --config "$work/baton.toml" > "$work/up.log" 2>&1 & up=$!
trap 'kill $up 2>/dev/null || true; wait $up 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$http/ready" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$http/ready" >/dev/null || { echo "baton up did not become ready:" >&2; cat "$work/up.log" >&2; exit 1; }
token=$("$baton" token --config "$work/baton.toml")
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); embedding tier: ${BATON_MINILM_DIR:-off (bash deploy/minilm.sh)}"
"$venv/bin/python" tests/clients/grpcio_unary.py --target "127.0.0.1:$grpc" --token "$token" --stubs "$work/stubs" "$@"
