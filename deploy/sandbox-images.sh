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

# The Debian mirror this machine's apt uses (deb822 .sources first, then sources.list).
mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # The first stanza that offers bookworm from a debian (not -security) archive.
    uri="$(awk 'BEGIN{RS=""; FS="\n"} /Suites:[^\n]*bookworm([ \n]|$)/ {
             for (i=1;i<=NF;i++) if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, " ");
               if (u[1] !~ /security/) { print u[1]; exit } } }' "$f")"
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  if [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1=="deb" && $0 ~ / bookworm / && $0 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)"
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  fi
  echo "http://deb.debian.org/debian"
}

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || {
    echo "sandbox-images.sh: debootstrap is not installed; run: bash deploy/setup.sh --docker" >&2; exit 1; }
  m="$(mirror)"
  mkdir -p "$cache"
  root="$(mktemp -d "${TMPDIR:-/tmp}/baton-sandbox-root.XXXXXX")"
  trap 'sudo_ rm -rf "$root"' EXIT
  echo "sandbox-images.sh: debootstrap bookworm (minbase + python3-minimal) from $m (about a minute)" >&2
  sudo_ env PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase --include=python3-minimal \
    bookworm "$root" "$m" >"$cache/debootstrap.log" 2>&1 || {
      echo "sandbox-images.sh: debootstrap failed; see $cache/debootstrap.log" >&2; exit 1; }
  # Trim what a sandbox never needs: apt's lists and caches, docs and man pages.
  sudo_ rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc \
    "$root"/usr/share/man "$root"/usr/share/locale
  sudo_ tar -C "$root" -c . >"$tarball.partial"
  mv "$tarball.partial" "$tarball"
fi

for image in "$PYTHON_IMAGE" "$SHELL_IMAGE"; do
  if ! has_image "$image"; then
    echo "sandbox-images.sh: importing $image from $tarball" >&2
    docker_ import --change 'WORKDIR /work' --change 'USER 65534:65534' \
      --change 'CMD ["/bin/sh"]' - "$image" <"$tarball" >/dev/null
  fi
done
