#!/usr/bin/env bash
# Builds the sandbox images locally, without a registry: a Debian bookworm root made by debootstrap
# (minbase + python3-minimal) from the machine's own apt mirror, imported with `docker import` as
#   baton-sandbox-python:1   (python3, sh)
#   baton-sandbox-shell:1    (the same root: sh, coreutils; for shell scripts)
# The root's tarball is cached under ~/.cache/baton-sandbox/ keyed by $ROOT_VERSION, so a second
# machine run (or CI) only imports it. An image that already exists is left alone.
# Needs a running Docker daemon (bash deploy/docker.sh) and debootstrap (bash deploy/setup.sh --docker).
# Users who can pull from a registry can build deploy/sandbox/Dockerfile instead.
set -euo pipefail

ROOT_VERSION="bookworm-minbase-python3-1"   # change it when the root's contents change
PYTHON_IMAGE="baton-sandbox-python:1"
SHELL_IMAGE="baton-sandbox-shell:1"
cache="${BATON_SANDBOX_CACHE:-$HOME/.cache/baton-sandbox}"
tarball="$cache/root-$ROOT_VERSION.tar"
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
docker_() { if [ -x /usr/bin/docker ]; then sudo_ /usr/bin/docker "$@"; else sudo_ docker "$@"; fi; }
has_image() { docker_ image inspect "$1" >/dev/null 2>&1; }

if has_image "$PYTHON_IMAGE" && has_image "$SHELL_IMAGE"; then exit 0; fi

if [ ! -s "$tarball" ]; then
  # The debootstrap root, shared with deploy/local-images.sh (the cluster's base image).
  bash "$(dirname "$0")/debian-root.sh" "$tarball" python3-minimal
fi

for image in "$PYTHON_IMAGE" "$SHELL_IMAGE"; do
  if ! has_image "$image"; then
    echo "sandbox-images.sh: importing $image from $tarball" >&2
    docker_ import --change 'WORKDIR /work' --change 'USER 65534:65534' \
      --change 'CMD ["/bin/sh"]' - "$image" <"$tarball" >/dev/null
  fi
done
