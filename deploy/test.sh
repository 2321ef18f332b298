#!/usr/bin/env bash
# Runs all tests: installs what is missing (nats-server, protoc, PostgreSQL, cargo-nextest, Docker,
# debootstrap), starts PostgreSQL on loopback and the Docker daemon, builds the sandbox images
# when missing (cached under ~/.cache/baton-sandbox), prepares the local model and llama-server
# (deploy/local-model.sh, from cache when present; the tests on the real model read
# BATON_LLAMA_SERVER and BATON_LOCAL_MODEL), then runs the workspace's tests. Each test starts its own
# nats-server on a free port and uses its own SQLite file or PostgreSQL database.
# Extra arguments go to `cargo nextest run` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --postgres --nextest --docker --model
# BATON_LLAMA_SERVER=… and BATON_LOCAL_MODEL=…, exported for the tests on the real local model.
model_env="$(bash deploy/local-model.sh --env)"
for kv in $model_env; do
  case "$kv" in
    BATON_LLAMA_SERVER=*|BATON_LOCAL_MODEL=*) export "${kv?}" ;;
    *) echo "test.sh: deploy/local-model.sh --env printed '$kv'" >&2; exit 1 ;;
  esac
done
bash deploy/docker.sh
bash deploy/sandbox-images.sh
BATON_TEST_POSTGRES_URL="$(bash deploy/postgres.sh)"
case "$BATON_TEST_POSTGRES_URL" in
  postgres://*) export BATON_TEST_POSTGRES_URL ;;
  *) echo "test.sh: deploy/postgres.sh printed '$BATON_TEST_POSTGRES_URL', not a postgres:// URL" >&2; exit 1 ;;
esac
# The decision classifier's MiniLM weights (cached after the first run).
export "$(bash deploy/minilm.sh --env)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
# No incremental state: every clean checkout is a new path, so it would only pile up (it
# reached 23 GB under the shared target dir and filled the disk) without speeding a rebuild.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# `-p CRATE` (or `--package`) narrows the run to those crates: with `--workspace` beside it
# cargo ignores `-p` and would build and run everything.
scope=(--workspace)
for arg in "$@"; do
  case "$arg" in -p|-p*|--package|--package=*) scope=() ;; esac
done
cargo nextest run "${scope[@]}" --no-fail-fast "$@"
# The deployments, when no nextest arguments narrow the run: the Kubernetes manifests against
# the schemas, then the docker-compose cluster test.
if [ "$#" = 0 ]; then
  bash deploy/k8s/validate.sh
  bash deploy/cluster-test.sh
fi
