#!/usr/bin/env bash
# The docker-compose cluster test (run by deploy/test.sh, so by .ci/run):
#  1. installs what is missing (Docker, docker-compose, debootstrap), starts dockerd, builds the
#     images without a registry (deploy/local-images.sh) and prints the Baton image's size;
#  2. `up` of docker-compose.yml with the demo fleet (slowed: each change takes a while), and
#     the time until all six services answer /ready;
#  3. a drift task from a trigger published on NATS (as the tenant's trigger identity) to
#     `awaiting_approval`, approved with the `baton` CLI from the host;
#  4. mid-rollout, kills the execution container (SIGKILL: nothing acked) and stops one NATS
#     node; starts execution again, leaves the NATS node down;
#  5. the task completes exactly once: one task_completed in the audit log in PostgreSQL, each
#     drifted server changed once and the others never, the audit chain verifies;
#  6. `down -v` leaves no container, network or volume of the project.
# Uses its own compose project name, so a cluster a user runs is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

project="${BATON_CLUSTER_PROJECT:-baton-cluster-test}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
export BATON_FLEET_PUT_DELAY_MS="${BATON_FLEET_PUT_DELAY_MS:-2000}" BATON_NATS_ACK_WAIT=10s
unset BATON_IMAGE BATON_NATS_IMAGE BATON_POSTGRES_IMAGE
say() { echo "cluster-test: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# 1. Tools and images.
bash deploy/setup.sh --docker
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  say "installing docker-compose"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
bash deploy/docker.sh
if docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose); else compose_cmd=(docker-compose); fi
compose() { "${compose_cmd[@]}" -p "$project" --profile demo "$@"; }
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
image_size="$(docker image inspect -f '{{.Size}}' baton:local)"
say "image baton:local: $((image_size / 1000 / 1000)) MB (base baton-debian: $(( $(docker image inspect -f '{{.Size}}' baton-debian:bookworm-minbase-ca-1) / 1000 / 1000 )) MB)"

logs_on_failure() {
  local rc=$?
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

# 2. Up, and the time until every service is ready.
services=(ingestion decision agent-runner validation execution audit)
start_ns=$(date +%s%N)
compose up -d >/dev/null 2>&1 || { compose up -d; fail "compose up"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(compose ps -q "$1")" 2>/dev/null || echo missing; }
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
say "up to ready (all six services /ready, NATS x3 and PostgreSQL from cold volumes): ${ready_s} s"

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

# 6. Down leaves nothing.
trap - EXIT
compose down -v --remove-orphans >/dev/null 2>&1
left="$(docker ps -aq --filter "label=com.docker.compose.project=$project")"
vols="$(docker volume ls -q --filter "label=com.docker.compose.project=$project")"
nets="$(docker network ls -q --filter "label=com.docker.compose.project=$project")"
[ -z "$left$vols$nets" ] || fail "down left containers [$left] volumes [$vols] networks [$nets]"
say "down: no container, volume or network of $project left"
echo "cluster: 1 passed, 0 failed"
