#!/usr/bin/env bash
# The main job: installs what is missing (nats-server, protoc), builds Baton, and runs the demo:
# a fleet of ten web servers on loopback and "Fix drift on production web servers" through all
# six services in one process, twice (once approved and completed, once rolled back).
# Extra arguments go to the demo (--keep-running leaves Baton up afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
cargo run --release --quiet -p baton-demo -- "$@"
