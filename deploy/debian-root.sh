#!/usr/bin/env bash
# Makes a Debian bookworm root filesystem as a tarball, without a registry, for `docker import`:
#   bash deploy/debian-root.sh TARBALL [PACKAGE,PACKAGE…]
# debootstrap --variant=minbase (plus the comma-separated extra packages) from this machine's own
# apt mirror, then apt's lists and caches, docs, man pages and locales are removed. Does nothing
# when TARBALL already exists: callers key its name by what is in it (change the name when the
# package list changes). The debootstrap log is written next to it (TARBALL.log).
# Used by deploy/sandbox-images.sh (the sandbox images) and deploy/local-images.sh (the base of
# the cluster's images). Needs debootstrap (bash deploy/setup.sh --docker) and root (or sudo).
set -euo pipefail

tarball="${1:?usage: debian-root.sh TARBALL [PACKAGE,PACKAGE…]}"
include="${2:-}"
[ -s "$tarball" ] && exit 0
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

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

command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || {
  echo "debian-root.sh: debootstrap is not installed; run: bash deploy/setup.sh --docker" >&2; exit 1; }
m="$(mirror)"
mkdir -p "$(dirname "$tarball")"
root="$(mktemp -d "${TMPDIR:-/tmp}/baton-debian-root.XXXXXX")"
trap 'sudo_ rm -rf "$root"' EXIT
echo "debian-root.sh: debootstrap bookworm (minbase${include:+ + $include}) from $m (about a minute)" >&2
sudo_ env PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase ${include:+--include="$include"} \
  bookworm "$root" "$m" >"$tarball.log" 2>&1 || {
    echo "debian-root.sh: debootstrap failed; see $tarball.log" >&2; exit 1; }
# Trim what a container never needs: apt's lists and caches, docs and man pages.
sudo_ rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc \
  "$root"/usr/share/man "$root"/usr/share/locale
sudo_ tar -C "$root" -c . >"$tarball.partial"
mv "$tarball.partial" "$tarball"
