#!/usr/bin/env bash
# The main job: installs what is missing (nats-server, protoc), builds Baton, and runs the demo:
# a fleet of ten web servers on loopback and "Fix drift on production web servers" through all
# six services in one process, twice (once approved and completed, once rolled back); then the
# AI scenarios on the local model (llama.cpp's llama-server with Qwen2.5-Coder-0.5B, prepared
# from cache by deploy/local-model.sh and started by Baton): "Why did our cloud bill jump 40%
# this month?" (the cost agent over the billing fixture the demo ships) and "Write a Python
# function to reverse a string" (the codegen agent, its tests run in the Docker sandbox). When
# the model or Docker cannot be prepared, the demo says why and skips only those scenarios.
# Extra arguments go to the demo (--keep-running leaves Baton up afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"

# The local model and llama-server (downloaded/built once, then from cache).
unset BATON_LLAMA_SERVER BATON_LOCAL_MODEL
if model_env="$(bash deploy/local-model.sh --env 2>/tmp/baton-demo-model.log)"; then
  for kv in $model_env; do
    case "$kv" in
      BATON_LLAMA_SERVER=*|BATON_LOCAL_MODEL=*) export "${kv?}" ;;
    esac
  done
else
  echo "demo.sh: the local model could not be prepared (see /tmp/baton-demo-model.log); the AI scenarios will be skipped" >&2
fi
# Docker and the sandbox images for the code-generation scenario.
export BATON_DEMO_NO_SANDBOX=""
if [ -n "${BATON_LOCAL_MODEL:-}" ]; then
  if ! bash deploy/docker.sh >/tmp/baton-demo-docker.log 2>&1; then
    BATON_DEMO_NO_SANDBOX="Docker could not be started (bash deploy/docker.sh; see /tmp/baton-demo-docker.log)"
  elif ! bash deploy/sandbox-images.sh >>/tmp/baton-demo-docker.log 2>&1; then
    BATON_DEMO_NO_SANDBOX="the sandbox images could not be built (bash deploy/sandbox-images.sh; see /tmp/baton-demo-docker.log)"
  fi
fi

cargo build --release --quiet -p baton -p baton-demo
# Scenario 4 fetches its artifact with the real CLI: `baton task <id> --artifact solution.py`.
export BATON_DEMO_CLI="$CARGO_TARGET_DIR/release/baton"
"$CARGO_TARGET_DIR/release/baton-demo" "$@"
