#!/usr/bin/env bash
# Installs what Baton needs to build and run, when missing: nats-server and protoc (always),
# PostgreSQL (with --postgres, for the tests), cargo-nextest (with --nextest), and Docker's daemon
# and debootstrap (with --docker, for the sandbox: deploy/docker.sh starts the daemon,
# deploy/sandbox-images.sh builds the images), and cmake, a C++ compiler and pip (with --model,
# for deploy/local-model.sh, which builds llama-server and downloads the local model).
# Debian/Ubuntu; uses sudo when not root. Safe to run again: it installs only what is missing.
set -euo pipefail

want_pg=0; want_nextest=0; want_docker=0; want_model=0
for a in "$@"; do
  case "$a" in
    --postgres) want_pg=1 ;;
    --nextest) want_nextest=1 ;;
    --docker) want_docker=1 ;;
    --model) want_model=1 ;;
    *) echo "usage: $0 [--postgres] [--nextest] [--docker] [--model]" >&2; exit 2 ;;
  esac
done

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
pkgs=()
{ command -v nats-server || [ -x /usr/sbin/nats-server ]; } >/dev/null || pkgs+=(nats-server)
command -v protoc >/dev/null || pkgs+=(protobuf-compiler)
if [ "$want_pg" = 1 ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  pkgs+=(postgresql)
fi
if [ "$want_docker" = 1 ]; then
  # A docker CLI alone (e.g. /usr/local/bin/docker) is not a daemon: look for dockerd.
  { command -v dockerd || [ -x /usr/sbin/dockerd ]; } >/dev/null || pkgs+=(docker.io)
  { command -v debootstrap || [ -x /usr/sbin/debootstrap ]; } >/dev/null || pkgs+=(debootstrap)
fi
if [ "$want_model" = 1 ]; then
  command -v cmake >/dev/null || pkgs+=(cmake)
  command -v g++ >/dev/null || pkgs+=(g++)
  { command -v pip || command -v pip3 || python3 -m pip --version; } >/dev/null 2>&1 || pkgs+=(python3-pip)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "setup: installing ${pkgs[*]}" >&2
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
if [ "$want_nextest" = 1 ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
