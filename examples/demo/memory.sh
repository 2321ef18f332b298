#!/usr/bin/env bash
# Idle and busy memory (RSS) of `baton up` with the local model: the baton process (all six
# services), its nats-server child and its llama-server child. Idle: after start, model
# loaded; busy: the peak, sampled every 0.5 s, while the cost agent answers "Why did our cloud
# bill jump 40% this month?" over examples/demo/billing.json.
#   bash examples/demo/memory.sh [path/to/baton]    # default: $CARGO_TARGET_DIR/release/baton
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
baton="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}/release/baton}"
eval "$(bash deploy/local-model.sh --env)"
work="$(mktemp -d /tmp/baton-memory-XXXXXX)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(port); http=$(port); files=$(port)
cp examples/demo/billing.json "$work/"
cat > "$work/baton.toml" <<TOML
grpc_addr = "127.0.0.1:$grpc"
http_addr = "127.0.0.1:$http"
data_dir = "$work/data"

[nats_server]
port = 0

[llm.local]
server = "$BATON_LLAMA_SERVER"
model = "$BATON_LOCAL_MODEL"
context_size = 4096
extra_args = ["--no-repack", "--threads", "1", "--poll", "0"]

[llm.providers.local]
timeout = "600s"

[agents]
dir = "$repo/agents"
http_allow_hosts = ["127.0.0.1:$files"]

[validation]
policy_dir = "$repo/policies"
TOML
(cd "$work" && exec python3 -m http.server "$files" --bind 127.0.0.1 >/dev/null 2>&1) & files_pid=$!
"$baton" up --config "$work/baton.toml" > "$work/up.log" 2>&1 & up=$!
trap 'kill $up $files_pid 2>/dev/null || true' EXIT
procs() { echo "$up" $(pgrep -P "$up" || true); }
total() { local t=0 v; for p in $(procs); do v=$(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || true); t=$((t + ${v:-0})); done; echo "$t"; }
each() { for p in $(procs); do echo "  $(cat "/proc/$p/comm") $(awk '/VmRSS/{print $2}' "/proc/$p/status") kB"; done; }
for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$http/ready" >/dev/null && break; sleep 1; done
sleep 10
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "idle: $(total) kB"; each
export BATON_CONFIG="$work/baton.toml" BATON_URL="http://127.0.0.1:$grpc"
id=$("$baton" submit "Why did our cloud bill jump 40% this month?" --env staging \
  --label "billing_url=http://127.0.0.1:$files/billing.json" | tail -1)
peak=0 status=""
for _ in $(seq 1 2400); do
  t=$(total); [ "$t" -gt "$peak" ] && peak=$t
  status=$("$baton" task "$id" 2>/dev/null | head -1 || true)
  case "$status" in *completed*|*failed*|*rejected*) break ;; esac
  sleep 0.5
done
echo "busy (peak while the cost task ran): $peak kB"; each
echo "task: $status"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
