#!/bin/sh
# baton-cluster-init: makes the docker-compose cluster's secrets once, in the `init` service
# (the Baton image, run as root to set owners: the services' files belong to uid 10001, the
# user of the Baton image, and are readable by it only), each into the volume of the one container that needs it:
#   /init/nats       auth.conf (the NATS users: public nkeys and permissions, from
#                    `baton nats-config`), routes.conf (the cluster routes' password)
#   /init/admin      every nkey seed (admin.nk creates the streams; trigger-default.nk
#                    publishes triggers for tenant `default`)
#   /init/postgres   password (PostgreSQL's `baton` user)
#   /init/<service>  nats.nk (its own nkey seed), jwt.secret (HS256 token secret, shared by
#                    the six), baton.toml (its settings that hold or name secrets); validation
#                    also validation.key (Ed25519 approval signing key), audit audit.key (its
#                    anchor key) and the database URL; all hold the public half of validation's
#                    key in execution.trusted_keys (every process validates every section).
# Nothing is committed: the volumes are the only copy (`docker compose down -v` deletes them).
# Runs again harmlessly: when /init/nats/auth.conf exists it changes nothing.
set -eu

out=/init
services="ingestion decision agent-runner validation execution audit"
if [ -s "$out/nats/auth.conf" ]; then
  echo "baton-cluster-init: secrets exist already; nothing to do"
  exit 0
fi
umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
hex32() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

# NATS identities: one nkey seed per user, and the server's authorization block.
BATON_DATA_DIR="$work" baton nats-config --keys-dir "$work/keys" >"$work/auth.conf"
# Signing keys: loading the configuration with an empty data dir creates validation's key
# there and fills execution.trusted_keys with its public key. Audit's anchor key is 32 random
# bytes in hex, the format of baton_runtime::signing.
BATON_DATA_DIR="$work" baton config >"$work/config.toml"
hex32 >"$work/audit.key"
pub="$(sed -n '/^\[execution\]/,/^\[/p' "$work/config.toml" | grep -o '[0-9a-f]\{64\}' | head -n 1)"
[ -n "$pub" ] || { echo "baton-cluster-init: no trusted key in \`baton config\`" >&2; exit 1; }
jwt="$(hex32)"
pg="$(hex32)"
route="$(hex32)"

cp "$work/auth.conf" "$out/nats/auth.conf"
cat >"$out/nats/routes.conf" <<EOF
# Written by baton-cluster-init: the password of the cluster routes between the NATS nodes.
authorization { user: route, password: "$route" }
routes: [
  "nats-route://route:$route@nats-1:6222"
  "nats-route://route:$route@nats-2:6222"
  "nats-route://route:$route@nats-3:6222"
]
EOF
chmod 0644 "$out/nats/auth.conf" "$out/nats/routes.conf"
cp "$work"/keys/*.nk "$out/admin/"
printf '%s' "$pg" >"$out/postgres/password"
chmod 0644 "$out/postgres/password"

for s in $services; do
  d="$out/$s"
  cp "$work/keys/$s.nk" "$d/nats.nk"
  printf '%s\n' "$jwt" >"$d/jwt.secret"
  # Its NATS identity: its seed, and the reply subjects only it may receive.
  cat >"$d/baton.toml" <<EOF
[nats]
nkey_seed_file = "/var/lib/baton/secrets/nats.nk"
inbox_prefix = "_INBOX_$s"
client_name = "baton-$s"

# Every process checks every section; only execution acts on this (validation's public key).
[execution]
trusted_keys = ["$pub"]

EOF
done
cp "$work/validation.key" "$out/validation/validation.key"
cp "$work/audit.key" "$out/audit/audit.key"
cat >>"$out/validation/baton.toml" <<EOF
[validation]
signing_key = "/var/lib/baton/secrets/validation.key"
EOF
cat >>"$out/audit/baton.toml" <<EOF
[audit]
signing_key = "/var/lib/baton/secrets/audit.key"
database_url = "postgres://baton:$pg@postgres:5432/baton"
EOF
chown -R 10001:10001 "$out/admin"
chmod 0700 "$out/admin"
for s in $services; do chown -R 10001:10001 "$out/$s"; done
echo "baton-cluster-init: secrets written; execution trusts validation's public key $(printf '%s' "$pub" | cut -c1-16)…"
