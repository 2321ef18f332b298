#!/usr/bin/env bash
# Starts the Docker daemon when it is not running, for the sandbox (crates/sandbox) and its tests.
# Runs `dockerd` in the background (log: $BATON_DOCKERD_LOG, default /var/log/baton-dockerd.log)
# and waits until its socket answers. Needs dockerd installed (bash deploy/setup.sh --docker) and
# root (or sudo). Does nothing when the daemon already answers. Safe to run again.
set -euo pipefail

sock="${BATON_DOCKER_SOCKET:-/var/run/docker.sock}"
log="${BATON_DOCKERD_LOG:-/var/log/baton-dockerd.log}"
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# Talk to the daemon through Debian's CLI when present: /usr/local/bin/docker may be a newer CLI
# without a daemon of its own.
docker_() { if [ -x /usr/bin/docker ]; then /usr/bin/docker "$@"; else docker "$@"; fi; }
answers() { sudo_ env DOCKER_HOST="unix://$sock" bash -c "$(declare -f docker_); docker_ version" >/dev/null 2>&1; }

if answers; then exit 0; fi
dockerd_bin="$(command -v dockerd || true)"
[ -n "$dockerd_bin" ] || [ ! -x /usr/sbin/dockerd ] || dockerd_bin=/usr/sbin/dockerd
if [ -z "$dockerd_bin" ]; then
  echo "docker.sh: dockerd is not installed (a docker CLI alone is not enough); run: bash deploy/setup.sh --docker" >&2
  exit 1
fi
echo "docker.sh: starting dockerd (log: $log)" >&2
# A daemon killed uncleanly leaves its pid file behind, and dockerd refuses to start over it.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  sudo_ rm -f /var/run/docker.pid
fi
sudo_ bash -c "nohup '$dockerd_bin' -H 'unix://$sock' >>'$log' 2>&1 </dev/null &"
for _ in $(seq 1 120); do
  if answers; then exit 0; fi
  sleep 0.5
done
echo "docker.sh: dockerd did not answer on $sock within 60 s; its log ($log) ends with:" >&2
tail -n 20 "$log" >&2 || true
exit 1
