#!/usr/bin/env bash
# Runs all tests: installs what is missing (nats-server, protoc, PostgreSQL, cargo-nextest, Docker,
# debootstrap), starts PostgreSQL on loopback and the Docker daemon, builds the sandbox images
# when missing (cached under ~/.cache/baton-sandbox), then runs the workspace's tests. Each test starts its own
# nats-server on a free port and uses its own SQLite file or PostgreSQL database.
# Extra arguments go to `cargo nextest run` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --postgres --nextest --docker
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
cargo nextest run --workspace --no-fail-fast "$@"
