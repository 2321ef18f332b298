#!/usr/bin/env bash
# The docker-compose cluster test (run by deploy/test.sh, so by .ci/run):
#  1. installs what is missing (Docker, docker-compose v1, Compose v2 by
#     deploy/docker/compose-v2.sh, debootstrap), starts dockerd, builds the images without a
#     registry (deploy/local-images.sh) and prints the Baton image's size; starts an OTLP
#     receiver on the host (the `cluster-trace` bin of baton-tests) on the Docker bridge;
#  2. `up` of docker-compose.yml with the demo fleet (slowed: each change takes a while), every
#     service exporting its spans to that receiver, and the time until all six services answer
#     /ready;
#  3. a drift task from a trigger published on NATS (as the tenant's trigger identity) to
#     `awaiting_approval`, approved with the `baton` CLI from the host;
#  4. mid-rollout, kills the execution container (SIGKILL: nothing acked) and stops one NATS
#     node; starts execution again, leaves the NATS node down;
#  5. the task completes exactly once: one task_completed in the audit log in PostgreSQL, each
#     drifted server changed once and the others never, the audit chain verifies;
#     The task is one trace: the receiver checks that spans from all six containers share one
#     trace id with the right parent links (baton_tests::otlp::check_task_trace);
#  6. `down -v` leaves no container, network or volume of the project;
#  7. with both Compose versions present, the other one (v1, Debian's `docker-compose`) brings
#     the same file up to ready and down again.
# BATON_CLUSTER_COMPOSE=v1|v2 runs everything with that one only.
# Uses its own compose project name, so a cluster a user runs is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

project="${BATON_CLUSTER_PROJECT:-baton-cluster-test}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
export BATON_FLEET_PUT_DELAY_MS="${BATON_FLEET_PUT_DELAY_MS:-2000}" BATON_NATS_ACK_WAIT=10s
unset BATON_IMAGE BATON_NATS_IMAGE BATON_POSTGRES_IMAGE OTEL_EXPORTER_OTLP_ENDPOINT \
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT OTEL_EXPORTER_OTLP_PROTOCOL OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
say() { echo "cluster-test: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# 1. Tools and images.
bash deploy/setup.sh --docker
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  say "installing docker-compose"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
bash deploy/docker.sh
# Compose v2: Docker's own plug-in when installed, else the one deploy/docker/compose-v2.sh
# installs from PyPI (in a Docker config dir of its own).
v2=(); v1=()
if docker compose version >/dev/null 2>&1; then
  v2=(docker compose)
elif [ "${BATON_CLUSTER_COMPOSE:-}" != v1 ] && v2_config="$(bash deploy/docker/compose-v2.sh)"; then
  v2=(env "DOCKER_CONFIG=$v2_config" docker compose)
else
  say "no Compose v2 (deploy/docker/compose-v2.sh failed): the test runs with docker-compose v1 only"
fi
command -v docker-compose >/dev/null && docker-compose version --short 2>/dev/null | grep -q '^1\.' && v1=(docker-compose)
case "${BATON_CLUSTER_COMPOSE:-}" in
  v1) [ "${#v1[@]}" != 0 ] || fail "no docker-compose v1"; compose_cmd=("${v1[@]}"); other=() ;;
  v2) [ "${#v2[@]}" != 0 ] || fail "no Compose v2"; compose_cmd=("${v2[@]}"); other=() ;;
  *) if [ "${#v2[@]}" != 0 ]; then compose_cmd=("${v2[@]}"); other=("${v1[@]}"); else compose_cmd=("${v1[@]}"); other=(); fi ;;
esac
[ "${#compose_cmd[@]}" != 0 ] || fail "neither docker compose (v2) nor docker-compose (v1) works"
say "compose: $("${compose_cmd[@]}" version 2>/dev/null | head -n 1)${other[*]:+ (then up/ready/down with $("${other[@]}" version --short 2>/dev/null))}"
# The services export their spans to the OTLP receiver on the host (set below): only compose
# sees these variables, so the CLI on the host exports nothing.
otel_env=()
compose() { env "${otel_env[@]}" "${compose_cmd[@]}" -p "$project" --profile demo "$@"; }
python=python3
if ! python3 -c 'import cryptography' 2>/dev/null; then
  venv="$HOME/.cache/baton-cluster-venv"
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import cryptography' 2>/dev/null || {
    say "installing python cryptography into $venv (nats-pub.py signs with the nkey seed)"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q cryptography; }
  python="$venv/bin/python"
fi
bash deploy/local-images.sh
baton="$CARGO_TARGET_DIR/release/baton"
say "cargo build --workspace --bin cluster-trace (the OTLP receiver of baton-tests)"
cargo build --quiet --workspace --bin cluster-trace
image_size="$(docker image inspect -f '{{.Size}}' baton:local)"
say "image baton:local: $((image_size / 1000 / 1000)) MB (base baton-debian: $(( $(docker image inspect -f '{{.Size}}' baton-debian:bookworm-minbase-ca-1) / 1000 / 1000 )) MB)"

# The EXIT trap: $1 is the script's exit status when the trap ran other commands first (their
# status would hide a failure's), else $? is.
logs_on_failure() {
  local rc=${1:-$?}
  if [ "$rc" != 0 ]; then
    say "logs of the failed run:"
    compose ps >&2 || true
    compose logs --no-color --tail=40 >&2 || true
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  exit "$rc"
}
trap logs_on_failure EXIT
compose down -v --remove-orphans >/dev/null 2>&1 || true

# The OTLP receiver, on the Docker bridge's gateway (what host.docker.internal, host-gateway,
# names in the containers): its first line is its HTTP and gRPC ports; it takes `killed …` and
# `check …` on its standard input (tests/src/bin/cluster-trace.rs).
gateway="$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')"
# A daemon that assigned the default bridge's address itself (a fresh one, seen with Docker
# 28) leaves IPAM's Gateway empty; the address is then the bridge interface's own.
if [ -z "$gateway" ]; then
  gateway="$(ip -4 -o addr show dev docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')"
fi
[ -n "$gateway" ] || fail "no gateway on Docker's bridge network (IPAM names none and docker0 has no IPv4 address): check \`docker network inspect bridge\`"
coproc TRACE { exec "$CARGO_TARGET_DIR/debug/cluster-trace" "$gateway"; }
trace_pid=$TRACE_PID; exec {trace_in}>&"${TRACE[1]}" {trace_out}<&"${TRACE[0]}"
trap 'rc=$?; kill "$trace_pid" 2>/dev/null || true; logs_on_failure "$rc"' EXIT
read -r -t 30 otlp_http _ <&"$trace_out" || fail "the OTLP receiver did not start"
otel_env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://host.docker.internal:$otlp_http"
  OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_BSP_SCHEDULE_DELAY=500
  OTEL_RESOURCE_ATTRIBUTES=deployment.environment=cluster-test)
say "OTLP receiver on $gateway:$otlp_http (HTTP/protobuf), as host.docker.internal in the containers"

# 2. Up, and the time until every service is ready.
services=(ingestion decision agent-runner validation execution audit)
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(compose ps -q "$1")" 2>/dev/null || echo missing; }
# up_ready: `up -d`, then waits until all six are healthy; ready_s is the time it took.
up_ready() {
  local start_ns deadline not_ready ready_ms s
  start_ns=$(date +%s%N)
  compose up -d >/dev/null 2>&1 || { compose up -d; fail "compose up"; }
  deadline=$((SECONDS + 240))
  while :; do
    not_ready=()
    for s in "${services[@]}"; do [ "$(health "$s")" = healthy ] || not_ready+=("$s"); done
    [ "${#not_ready[@]}" = 0 ] && break
    [ "$SECONDS" -lt "$deadline" ] || fail "not ready after 240 s: ${not_ready[*]}"
    sleep 0.5
  done
  ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  ready_s="$((ready_ms / 1000)).$(printf %03d $((ready_ms % 1000)))"
}
up_ready
say "up to ready with ${compose_cmd[*]} (all six services /ready, NATS x3 and PostgreSQL from cold volumes): ${ready_s} s"

token="$(compose exec -T ingestion baton token --sub cluster-test --role submitter --role approver --role operator | tr -d '\r\n')"
cli() { local port="$1"; shift; "$baton" --url "http://127.0.0.1:$port" --token "$token" "$@"; }
# The status in `baton task`'s first line (`task <id> [executing] …`); read all of its output,
# so the CLI never writes into a closed pipe.
status_of() { local out; out="$(cli 50056 task "$1")" || return 1; sed -n '1s/.*\[\([a-z_]*\)\].*/\1/p' <<<"$out"; }
wait_status() {
  local id="$1" want="$2" limit=$((SECONDS + $3)) st
  while :; do
    st="$(status_of "$id" || true)"
    [ "$st" = "$want" ] && return 0
    case "$st" in failed|rejected) cli 50056 task "$id" >&2; fail "task $id ended $st, not $want" ;; esac
    [ "$SECONDS" -lt "$limit" ] || { cli 50056 task "$id" >&2 || true; fail "task $id is '$st', not $want, after $3 s"; }
    sleep 0.5
  done
}
# Applies per fleet server: "web-01 0" lines, from each server's /admin/state.
fleet_applies() {
  compose exec -T fleet bash -c '
    while read -r id url; do
      port=${url##*:}
      exec 3<>/dev/tcp/127.0.0.1/$port
      printf "GET /admin/state HTTP/1.0\r\n\r\n" >&3
      body=$(cat <&3); exec 3<&-
      n=$(printf "%s" "$body" | grep -o "\"applies\":[0-9]*" | cut -d: -f2)
      echo "$id $n"
    done < <(awk -F" = " "/^id = /{gsub(/\"/,\"\",\$2); id=\$2} /^address = /{gsub(/\"/,\"\",\$2); print id, \$2}" /var/lib/baton/fleet/inventory.toml)'
}
psql_() { compose exec -T postgres psql -U baton -d baton -tAc "$1" | tr -d '\r'; }

# 3. A drift task from a trigger on NATS, as the tenant's trigger publisher.
seed="$(compose run --rm --no-deps -T --entrypoint cat streams /var/lib/baton/secrets/trigger-default.nk 2>/dev/null | tr -d '\r')"
[ -n "$seed" ] || fail "no trigger seed in the admin volume"
printf '%s' "$seed" | "$python" deploy/docker/nats-pub.py --server 127.0.0.1:4222 --seed-file - \
  baton.trigger.default.cli '{"text":"Fix drift on production web servers","environment":"production"}'
# A service's identity may not publish triggers: the same publish as ingestion is refused.
if compose exec -T ingestion cat /var/lib/baton/secrets/nats.nk | "$python" deploy/docker/nats-pub.py \
     --server 127.0.0.1:4222 --seed-file - baton.trigger.default.cli '{"text":"x"}' 2>/dev/null; then
  fail "ingestion's NATS identity could publish a trigger"
fi
id=""
for _ in $(seq 1 60); do
  id="$(cli 50056 tasks | awk 'NR > 1 { print $1; exit }')"
  [ -n "$id" ] && break
  sleep 0.5
done
[ -n "$id" ] || fail "the trigger never became a task"
say "task $id from the NATS trigger"
wait_status "$id" awaiting_approval 60
cli 50054 approve "$id" --reason "cluster test" >&2

# 4. Mid-rollout (the canary's change applied, the first wave's in flight: each change takes
# BATON_FLEET_PUT_DELAY_MS), kill execution and stop one NATS node.
execution_id="$(compose ps -q execution)"
wait_status "$id" executing 60
sleep "$(awk -v ms="$BATON_FLEET_PUT_DELAY_MS" 'BEGIN { printf "%.1f", ms / 1000 + 0.5 }')"
docker kill "$execution_id" >/dev/null
# Gone for sure before the receiver notes the kill: spans it sent before arrive before the note.
for _ in $(seq 1 50); do
  [ "$(docker inspect -f '{{.State.Running}}' "$execution_id")" = false ] && break
  sleep 0.1
done
sleep 0.5
echo "killed baton-execution" >&"$trace_in"
compose stop nats-2 >/dev/null 2>&1
mid="$(status_of "$id")"
applied_mid="$(fleet_applies | awk '$2 > 0' | wc -l)"
say "killed execution (SIGKILL) and stopped nats-2 with the task '$mid' and $applied_mid of 6 drifted servers changed"
[ "$mid" != completed ] || fail "the task completed before the kill: the test proved nothing (raise BATON_FLEET_PUT_DELAY_MS)"
sleep 3
compose start execution >/dev/null 2>&1

# 5. Completed exactly once.
wait_status "$id" completed 180
completed="$(psql_ "SELECT count(*) FROM audit_log WHERE task_id = '$id' AND kind = 'task_completed'")"
approved="$(psql_ "SELECT count(*) FROM audit_log WHERE task_id = '$id' AND kind = 'task_approved'")"
rows="$(psql_ "SELECT count(*) FROM audit_log WHERE task_id = '$id'")"
view="$(psql_ "SELECT status FROM tasks WHERE task_id = '$id'")"
[ "$completed" = 1 ] || fail "$completed task_completed records in PostgreSQL, expected 1"
[ "$approved" = 1 ] || fail "$approved task_approved records in PostgreSQL, expected 1"
[ "$view" = completed ] || fail "PostgreSQL's task view says '$view'"
applies="$(fleet_applies)"
echo "$applies" | awk '
  { n[$1] = $2 }
  END {
    split("web-02 web-03 web-05 web-06 web-08 web-09", drifted, " ")
    for (i in drifted) { d[drifted[i]] = 1; if (n[drifted[i]] != 1) { print "drifted " drifted[i] " changed " n[drifted[i]] " times"; bad = 1 } }
    for (s in n) if (!(s in d) && n[s] != 0) { print "golden " s " changed " n[s] " times"; bad = 1 }
    if (length(n) != 10) { print "fleet has " length(n) " servers"; bad = 1 }
    exit bad
  }' >&2 || fail "not exactly once: $(echo "$applies" | tr '\n' ' ')"
cli 50056 audit verify >&2 || fail "the audit chain does not verify"
say "task $id completed exactly once: $rows audit records in PostgreSQL, 1 task_completed, each drifted server changed once; survived: the task, the JetStream streams (R3 on 2 of 3 nodes), execution's redelivered rollout"
# One trace across the six containers (the receiver exits 0 when the check passes).
echo "check $id 60" >&"$trace_in"
trace_rc=0; wait "$trace_pid" || trace_rc=$?
[ "$trace_rc" = 0 ] || fail "task $id is not one trace across the six services (the receiver's reason is above)"

# 6. Down leaves nothing.
down_clean() {
  compose down -v --remove-orphans >/dev/null 2>&1
  local left vols nets
  left="$(docker ps -aq --filter "label=com.docker.compose.project=$project")"
  vols="$(docker volume ls -q --filter "label=com.docker.compose.project=$project")"
  nets="$(docker network ls -q --filter "label=com.docker.compose.project=$project")"
  [ -z "$left$vols$nets" ] || fail "down left containers [$left] volumes [$vols] networks [$nets]"
  say "down with ${compose_cmd[*]}: no container, volume or network of $project left"
}
down_clean

# 7. The other Compose version: the same file up to ready, and down.
if [ "${#other[@]}" != 0 ]; then
  compose_cmd=("${other[@]}"); otel_env=()
  trap logs_on_failure EXIT
  up_ready
  say "up to ready with ${compose_cmd[*]} (cold volumes again): ${ready_s} s"
  trap - EXIT
  down_clean
fi
echo "cluster: 1 passed, 0 failed"
