"""Renders deploy/helm/tengine over each values file in its ci/ folder, offline, with
Helm's own renderer (helm-python-sdk binds Helm's Go SDK), validates every rendered
object against Kubernetes's schemas (kubernetes-validate, strict), asserts what the
chart promises, and writes the probe contract the Rust test starts the binaries
with (services/cli/tests/probes.rs).

Usage: python chart_check.py CONTRACT_OUT RENDERED_DIR   (run by deploy/check)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "tengine"
KUBE_VERSION = "1.30.0"
SERVICES = ("ingress", "worker", "projector")
# The settings that are secrets (services/core/src/config.rs FILE_SECRETS): never in a ConfigMap.
# (nats_url may be one too; the chart keeps it in the ConfigMap and checks it carries no credentials.)
SECRET_SETTINGS = {"DATABASE_URL", "ADMIN_TOKEN", "MASTER_KEY", "PREVIOUS_MASTER_KEYS", "SESSION_SECRET"}
# Each service's operator listener setting (services/core/config.default.toml).
ADMIN_LISTEN = {
    "ingress": "TENGINE_INGRESS__METRICS_LISTEN",
    "worker": "TENGINE_WORKER__HEALTH_LISTEN",
    "projector": "TENGINE_PROJECTOR__HEALTH_LISTEN",
}
# The paths the binaries serve (services/core/src/health.rs).
LIVE, READY = "/healthz/live", "/healthz/ready"

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)


def render(values: dict) -> tuple[list[dict], str]:
    """The objects, and the manifest text as Helm would send it."""
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    manifests = chart.render(values, name="tengine", namespace="tengine", is_install=True)
    docs, texts = [], []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")) or not text.strip():
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
        texts.append(f"# Source: {path}\n{text.strip()}\n")
    return docs, "---\n".join(texts)


def validate(label: str, docs: list[dict]) -> int:
    skipped = 0
    for doc in docs:
        name = f"{label}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # CRD kinds (ServiceMonitor): no schema bundled; checked below by hand.
            check(doc.get("kind") == "ServiceMonitor", f"{name}: no schema for this kind")
            skipped += 1
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            failures.append(f"{name}: {path}: {e.message}")
    return skipped


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def component(doc: dict) -> str:
    return doc["metadata"]["labels"].get("app.kubernetes.io/component", "")


def assert_chart(label: str, values: dict, docs: list[dict]) -> dict:
    deployments = {component(d): d for d in by_kind(docs, "Deployment").values()}
    check(sorted(deployments) == sorted(SERVICES), f"{label}: deployments {sorted(deployments)}")
    configmaps = by_kind(docs, "ConfigMap")
    check(len(configmaps) == 1, f"{label}: one ConfigMap")
    config = next(iter(configmaps.values()))["data"]

    # No secret in a ConfigMap: neither a secret setting nor a secret's value.
    secret_values = [v for k, v in values.get("secrets", {}).items() if k != "existingSecret" and v]
    for key, value in config.items():
        bare = key.removeprefix("TENGINE_")
        check(bare not in SECRET_SETTINGS, f"{label}: secret setting {key} in the ConfigMap")
        check(all(s not in str(value) for s in secret_values), f"{label}: a secret's value in ConfigMap key {key}")
    check(not re.search(r"://[^/@\s]+:[^/@\s]+@", config.get("TENGINE_NATS_URL", "")), f"{label}: NATS credentials in the ConfigMap")

    projector = deployments["projector"]["spec"]
    check(projector.get("replicas") == 1, f"{label}: projector replicas {projector.get('replicas')}")
    check(projector.get("strategy", {}).get("type") == "Recreate", f"{label}: projector strategy")
    projector_name = deployments["projector"]["metadata"]["name"]
    check(all(h["spec"]["scaleTargetRef"]["name"] != projector_name for h in by_kind(docs, "HorizontalPodAutoscaler").values()),
          f"{label}: the projector is autoscaled")

    secret_name = values.get("secrets", {}).get("existingSecret") or "tengine-secrets"
    secrets = by_kind(docs, "Secret")
    if values.get("secrets", {}).get("existingSecret"):
        check(not secrets, f"{label}: a Secret rendered although existingSecret is set")
    else:
        check(list(secrets) == [secret_name], f"{label}: the chart's Secret {list(secrets)}")
        hook = secrets.get(secret_name, {}).get("metadata", {}).get("annotations", {}).get("helm.sh/hook", "")
        check("pre-install" in hook and "pre-upgrade" in hook, f"{label}: the Secret must exist before the migration hook")

    jobs = by_kind(docs, "Job")
    migrations = values.get("migrations", {}).get("enabled", True)
    check(config.get("TENGINE_RUN_MIGRATIONS") == ("false" if migrations else "true"), f"{label}: run_migrations")
    if migrations:
        check(len(jobs) == 1, f"{label}: one migration Job")
        for job in jobs.values():
            hooks = set(job["metadata"]["annotations"].get("helm.sh/hook", "").split(","))
            check({"pre-install", "pre-upgrade"} <= hooks, f"{label}: migration hook annotations {hooks}")
            check(job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"], f"{label}: migration args")
    else:
        check(not jobs, f"{label}: a migration Job although migrations are off")

    contract = {}
    for service, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        check("checksum/config" in pod["metadata"].get("annotations", {}), f"{label}: {service} has no checksum/config")
        spec = pod["spec"]
        psc = spec.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, f"{label}: {service} pod runAsNonRoot")
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: {service} pod seccomp")
        (container,) = spec["containers"]
        sc = container.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{label}: {service} readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{label}: {service} allowPrivilegeEscalation")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: {service} drops ALL capabilities")
        check(container["args"] == [service], f"{label}: {service} args {container['args']}")
        check(not container.get("env"), f"{label}: {service} env outside the ConfigMap")

        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        admin_port = int(config[ADMIN_LISTEN[service]].rsplit(":", 1)[1])
        check(ports.get("admin") == admin_port, f"{label}: {service} admin port {ports.get('admin')} vs {admin_port}")
        probes = {}
        for kind, path in (("livenessProbe", LIVE), ("readinessProbe", READY)):
            get = container.get(kind, {}).get("httpGet", {})
            port = ports.get(get.get("port"), get.get("port"))
            check(get.get("path") == path, f"{label}: {service} {kind} path {get.get('path')}")
            check(port == admin_port, f"{label}: {service} {kind} port {port} is not the listener's {admin_port}")
            probes[kind] = {"path": get.get("path"), "port": port}
        if service == "ingress":
            listen = int(config["TENGINE_INGRESS__LISTEN"].rsplit(":", 1)[1])
            check(ports.get("http") == listen, f"{label}: ingress http port {ports.get('http')} vs {listen}")

        # Every *_FILE names a file of a mounted volume.
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        for key, value in config.items():
            if key.endswith("_FILE") and key.removeprefix("TENGINE_").removesuffix("_FILE") in SECRET_SETTINGS:
                check(any(value.startswith(m + "/") for m in mounts), f"{label}: {key}={value} is not in a mounted volume")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        check(volumes.get("secrets", {}).get("secret", {}).get("secretName") == secret_name, f"{label}: {service} mounts {secret_name}")
        contract[service] = {"args": container["args"], "ports": ports, "probes": probes}

    for sm in by_kind(docs, "ServiceMonitor").values():
        endpoints = sm["spec"]["endpoints"]
        check(all(e["port"] == "admin" and e["path"] == "/metrics" for e in endpoints), f"{label}: ServiceMonitor endpoints")
    for job in jobs.values():
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        contract["migrate"] = {"args": container["args"], "env": env}
    return {"env": config, "services": contract, "secret_dir": "/run/secrets/tengine"}


def main() -> int:
    out, rendered_dir = Path(sys.argv[1]), Path(sys.argv[2])
    # Without secrets or an existing Secret, rendering must fail (no secret is ever generated).
    try:
        render({})
        failures.append("defaults without secrets rendered")
    except helm.HelmError as e:  # type: ignore[attr-defined]
        check("secrets.databaseUrl" in str(e), f"defaults without secrets: {e}")
    # A secret through `config` would land in the ConfigMap: the schema refuses it.
    try:
        render({"secrets": {"existingSecret": "s"}, "config": {"TENGINE_MASTER_KEY": "x"}})
        failures.append("a secret setting in config was accepted")
    except helm.HelmError as e:  # type: ignore[attr-defined]
        check("TENGINE_MASTER_KEY" in str(e) or "config" in str(e), f"secret in config: {e}")
    contract = None
    total = skipped = 0
    for values_file in sorted((CHART / "ci").glob("*-values.yaml")):
        label = values_file.stem
        values = helm.values_from_yaml(values_file.read_text())
        docs, text = render(values)
        rendered_dir.mkdir(parents=True, exist_ok=True)
        (rendered_dir / f"{label}.yaml").write_text(text)
        total += len(docs)
        skipped += validate(label, docs)
        found = assert_chart(label, values, docs)
        if label == "default-values":
            contract = found
    check(contract is not None, "no ci/default-values.yaml")
    if failures:
        print("\n".join(f"chart: FAIL {f}" for f in failures), file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(contract, indent=2, sort_keys=True) + "\n")
    print(f"chart: {total} objects rendered and validated (Kubernetes {KUBE_VERSION}, strict; {skipped} CRD objects "
          f"without schema), assertions passed; probe contract in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
