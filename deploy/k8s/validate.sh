#!/usr/bin/env bash
# Renders both overlays (dev, production) with kustomize and validates every object against the
# Kubernetes JSON schemas (kubernetes-validate from PyPI, which ships the schemas: no network at
# validation time; --strict refuses unknown fields), then checks the rules Baton's manifests
# promise: every service Deployment has /health and /ready probes, resources, a non-root
# read-only container; audit has one replica; NATS is a StatefulSet of three; every object the
# manifests need exists. Run by deploy/test.sh; safe to run again.
# Needs kubectl (its built-in kustomize) and python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

K8S_VERSION="${BATON_K8S_VERSION:-1.30.0}"
venv="${BATON_K8S_VENV:-$HOME/.cache/baton-k8s-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "k8s/validate.sh: installing kubernetes-validate into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi
command -v kubectl >/dev/null || {
  echo "k8s/validate.sh: kubectl is not installed (it renders the kustomizations); install it, e.g. apt-get install kubectl" >&2; exit 1; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in dev production; do
  # The base reads the repository's policies and rules, outside deploy/k8s.
  kubectl kustomize --load-restrictor LoadRestrictionsNone "deploy/k8s/overlays/$overlay" >"$out/$overlay.yaml"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$out/$overlay.yaml"
  "$venv/bin/python" - "$out/$overlay.yaml" "$overlay" <<'PY'
import sys, yaml
path, overlay = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] in ("ConfigMap", "Secret") and d["metadata"]["name"].count("-") > 1 and len(d["metadata"]["name"].rsplit("-", 1)[1]) == 10 else d["metadata"]["name"]): d for d in docs}
errors = []
services = ["ingestion", "decision", "agent-runner", "validation", "execution", "audit"]
for s in services:
    d = by.get(("Deployment", s))
    if d is None:
        errors.append(f"no Deployment {s}"); continue
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if c.get("args") != ["serve", s]: errors.append(f"{s}: args {c.get('args')}")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health": errors.append(f"{s}: no /health liveness probe")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready": errors.append(f"{s}: no /ready readiness probe")
    if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"): errors.append(f"{s}: no resources")
    if not pod.get("securityContext", {}).get("runAsNonRoot"): errors.append(f"{s}: may run as root")
    if not c.get("securityContext", {}).get("readOnlyRootFilesystem"): errors.append(f"{s}: writable root filesystem")
    if ("Service", s) not in by: errors.append(f"no Service {s}")
    if ("PodDisruptionBudget", s) not in by: errors.append(f"no PodDisruptionBudget {s}")
    env = {e["name"]: e for e in c.get("env", [])}
    if env.get("BATON_NATS__INBOX_PREFIX", {}).get("value") != f"_INBOX_{s}": errors.append(f"{s}: not its own NATS inbox")
    seeds = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == f"baton-nats-{s}"]
    if not seeds: errors.append(f"{s}: no NATS seed Secret baton-nats-{s}")
audit = by.get(("Deployment", "audit"))
if audit and (audit["spec"]["replicas"] != 1 or audit["spec"].get("strategy", {}).get("type") != "Recreate"):
    errors.append("audit: one writer needs replicas 1 and strategy Recreate")
nats = by.get(("StatefulSet", "nats"))
if not nats or nats["spec"]["replicas"] != 3: errors.append("NATS is not a StatefulSet of three")
hpa = by.get(("HorizontalPodAutoscaler", "agent-runner"))
if not hpa or hpa["spec"]["scaleTargetRef"]["name"] != "agent-runner": errors.append("no HPA for agent-runner")
if not any(k[0] == "NetworkPolicy" for k in by): errors.append("no NetworkPolicy")
for cm in ["baton-config", "baton-policies", "baton-agents", "baton-env", "baton-trust", "nats-config"]:
    if ("ConfigMap", cm) not in by: errors.append(f"no ConfigMap {cm}")
text = open(path).read()
for secret in ["baton-auth", "baton-audit-db", "baton-model-api", "baton-validation-signing", "baton-audit-signing", "baton-nats-auth", "baton-nats-routes"]:
    if secret not in text: errors.append(f"Secret {secret} is not referenced")
if errors:
    print(f"k8s/validate.sh: {overlay}: " + "; ".join(errors), file=sys.stderr); sys.exit(1)
print(f"k8s {overlay}: {len(docs)} objects valid against the Kubernetes schemas and Baton's rules")
PY
done
