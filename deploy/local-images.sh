#!/usr/bin/env bash
# Builds every image the docker-compose cluster needs, without a registry and without Rust
# inside Docker:
#   baton-debian:<key>     Debian bookworm minbase + CA certificates, by debootstrap from this
#                          machine's apt mirror (deploy/debian-root.sh), then `docker import`
#   baton-nats:local       Debian's nats-server on that base          (deploy/docker/nats.Dockerfile)
#   baton-postgres:local   Debian's PostgreSQL 15 on that base        (deploy/docker/postgres.Dockerfile)
#   baton:local            `baton` and `baton-fleet` built on the host with cargo, on that base
#                          (deploy/docker/Dockerfile, target `host`)
# Each image is labelled with a key (a hash of what it is built from: the Dockerfile, scripts,
# binaries, policies); an image whose key is unchanged is left alone, so a second run only
# runs `cargo build` (a no-op when nothing changed) and compares hashes.
# Users who can pull use the official images instead: BATON_NATS_IMAGE=nats:2.10,
# BATON_POSTGRES_IMAGE=postgres:15, and build baton:local with
# `docker build -f deploy/docker/Dockerfile -t baton:local .` (Rust inside Docker).
# Needs Docker (bash deploy/docker.sh), debootstrap (bash deploy/setup.sh --docker), cargo.
# Prints nothing on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${BATON_IMAGES_CACHE:-$HOME/.cache/baton-images}"
ROOT_VERSION="bookworm-minbase-ca-1"   # change it when the root's package list changes
tarball="$cache/root-$ROOT_VERSION.tar"
BASE_IMAGE="baton-debian:$ROOT_VERSION"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
docker_() { if [ -x /usr/bin/docker ]; then sudo_ /usr/bin/docker "$@"; else sudo_ docker "$@"; fi; }
has_image() { docker_ image inspect "$1" >/dev/null 2>&1; }
key_of() { docker_ image inspect -f '{{ index .Config.Labels "org.baton.key" }}' "$1" 2>/dev/null || true; }
hash_files() { sha256sum "$@" | sha256sum | cut -c1-16; }
log() { echo "local-images.sh: $*" >&2; }

# 1. The Debian base.
if ! has_image "$BASE_IMAGE"; then
  bash deploy/debian-root.sh "$tarball" ca-certificates
  log "importing $BASE_IMAGE"
  docker_ import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" <"$tarball" >/dev/null
fi

# build IMAGE KEY CONTEXT DOCKERFILE [ARGS…]: builds when the image's key differs. apt inside
# the build reaches the mirror through the host's network.
build() {
  local image="$1" key="$2" context="$3" dockerfile="$4"
  shift 4
  if [ "$(key_of "$image")" = "$key" ]; then
    log "$image is up to date ($key)"
    return
  fi
  log "building $image ($key)"
  docker_ build --network host -q -f "$dockerfile" --build-arg "BASE=$BASE_IMAGE" \
    --label "org.baton.key=$key" -t "$image" "$@" "$context" >/dev/null
}

# 2. NATS and PostgreSQL from Debian's packages.
build baton-nats:local "$ROOT_VERSION-$(hash_files deploy/docker/nats.Dockerfile)" \
  deploy/docker deploy/docker/nats.Dockerfile
pg_context="$(mktemp -d)"
trap 'rm -rf "$pg_context"' EXIT
mkdir -p "$pg_context/deploy/docker"
cp deploy/docker/postgres-entrypoint.sh "$pg_context/deploy/docker/"
build baton-postgres:local \
  "$ROOT_VERSION-$(hash_files deploy/docker/postgres.Dockerfile deploy/docker/postgres-entrypoint.sh)" \
  "$pg_context" deploy/docker/postgres.Dockerfile

# 3. Baton from binaries built on the host.
log "cargo build --release -p baton -p baton-fleet (target dir $CARGO_TARGET_DIR)"
cargo build --release --quiet -p baton -p baton-fleet
ctx="$(mktemp -d)"
trap 'rm -rf "$pg_context" "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/deploy/docker"
cp "$CARGO_TARGET_DIR/release/baton" "$CARGO_TARGET_DIR/release/baton-fleet" "$ctx/bin/"
cp -r policies "$ctx/policies"
cp deploy/docker/cluster-init.sh deploy/docker/Dockerfile "$ctx/deploy/docker/"
key="$ROOT_VERSION-$(cd "$ctx" && hash_files bin/* policies/* deploy/docker/*)"
build baton:local "$key" "$ctx" deploy/docker/Dockerfile --target host
