"""examples/kubernetes validated offline: kubernetes-validate --strict, kustomize rendering, the PodMonitor's
structure, the pod's wiring (ports, probes, drain timing, security), and the rules ConfigMap via
`decorator validate`."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "examples" / "kubernetes"
VENV_BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"  # pinned: the oldest Kubernetes still commonly run that has everything used here
DRAIN_TIMEOUT_S = 15    # decorator's default --drain-timeout; the manifests pass it explicitly
# Not built-in kinds: kubernetes-validate has no schema for them (it only warns); checked below instead.
NON_CORE = {"Kustomization", "Component", "PodMonitor"}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml"))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_resources() -> list[dict]:
    return [d for p in manifest_files() for d in docs(p)]


def one(kind: str, name: str) -> dict:
    [r] = [r for r in all_resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return r


def kubernetes_validate(*files: Path | str) -> subprocess.CompletedProcess:
    exe = VENV_BIN / "kubernetes-validate"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kubernetes_validate"]
    return subprocess.run([*cmd, "--strict", "--kubernetes-version", K8S_VERSION, *map(str, files)],
                          check=False, capture_output=True, text=True, timeout=120)


# -- schema validation --------------------------------------------------------------------------------

def test_every_core_manifest_passes_strict_validation():
    files = [p for p in manifest_files() if any(d["kind"] not in NON_CORE for d in docs(p))]
    assert len(files) >= 7
    proc = kubernetes_validate(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for f in files:
        for d in docs(f):
            if d["kind"] in NON_CORE:
                continue
            kn = f"{d['kind'].lower()}/{d['metadata']['name']}"
            line = f"INFO {f} passed for resource {kn} against version 1.30"
            assert line in proc.stdout, proc.stdout  # a kind without a schema only warns: insist on "passed"
    assert "ERROR" not in proc.stdout and "WARN" not in proc.stdout, proc.stdout


def test_strict_validation_catches_a_typo(tmp_path):
    # Proves the check above can fail: an unknown field is an error only in --strict mode.
    dep = copy.deepcopy(one("Deployment", "web"))
    dep["spec"]["template"]["spec"]["containers"][1]["imagePullPolicyy"] = "Always"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dep))
    proc = kubernetes_validate(bad)
    assert proc.returncode == 1 and "imagePullPolicyy" in proc.stdout, proc.stdout


def _kustomize(target: Path) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed; kustomization not rendered")
    proc = subprocess.run([kubectl, "kustomize", str(target)], check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_kustomization_lists_every_manifest_and_renders_valid(tmp_path):
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk, "every manifest is applied by `kubectl apply -k` (and nothing missing)"
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(_kustomize(K8S))
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered.read_text()) if d)
    assert kinds == sorted(d["kind"] for p in on_disk for d in docs(K8S / p))
    proc = kubernetes_validate(rendered)
    assert proc.returncode == 0 and "WARN" not in proc.stdout and "ERROR" not in proc.stdout, proc.stdout


def test_prometheus_operator_component_renders(tmp_path):
    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {rel}\ncomponents:\n  - {rel}/prometheus-operator\n")
    rendered = [d for d in yaml.safe_load_all(_kustomize(tmp_path)) if d]
    [pm] = [d for d in rendered if d["kind"] == "PodMonitor"]
    check_podmonitor(pm, one("Deployment", "web"))


# -- the PodMonitor: a CRD, so a structural check of its own ---------------------------------------------

PODMONITOR_SPEC_KEYS = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels",
                        "sampleLimit", "targetLimit"}
ENDPOINT_KEYS = {"port", "portNumber", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                 "relabelings", "metricRelabelings", "params", "enableHttp2", "filterRunning"}


def check_podmonitor(pm: dict, deployment: dict) -> None:
    """The fields the Prometheus Operator's v1 PodMonitor defines, and that it really selects the web pods'
    admin port (the failure mode a schema alone would not catch)."""
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    assert set(pm) <= {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", pm["metadata"]["name"])
    spec = pm["spec"]
    assert set(spec) <= PODMONITOR_SPEC_KEYS, set(spec) - PODMONITOR_SPEC_KEYS
    pod = deployment["spec"]["template"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert spec["podMetricsEndpoints"]
    for ep in spec["podMetricsEndpoints"]:
        assert set(ep) <= ENDPOINT_KEYS, set(ep) - ENDPOINT_KEYS
        assert ep["port"] in ports and ports[ep["port"]] == 9090
        assert ep.get("path", "/metrics") == "/metrics"
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", ep.get("interval", "30s"))


def test_podmonitor_structure():
    check_podmonitor(docs(K8S / "prometheus-operator" / "podmonitor.yaml")[0], one("Deployment", "web"))


def test_podmonitor_check_catches_a_wrong_port():
    pm = copy.deepcopy(docs(K8S / "prometheus-operator" / "podmonitor.yaml")[0])
    pm["spec"]["podMetricsEndpoints"][0]["port"] = "http"
    with pytest.raises(AssertionError):
        check_podmonitor(pm, one("Deployment", "web"))


# -- the pod's wiring -----------------------------------------------------------------------------------

def containers(deployment: dict) -> dict[str, dict]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def prestop_seconds(container: dict) -> int:
    cmd = container["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"
    return int(cmd[1])


def test_the_pod_runs_the_seed_app_behind_the_sidecar():
    web = one("Deployment", "web")
    c = containers(web)
    assert set(c) == {"web", "decorator"}
    assert c["web"]["command"][:4] == ["python", "-m", "http.server", "8087"]
    assert "ports" not in c["web"], "the app is reached only through the sidecar"
    d = c["decorator"]
    e = env(d)
    assert (e["PORT"], e["TARGET_PORT"], e["RULES"]) == ("8080", "8087", "/etc/decorator/rules")
    assert e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {p["name"]: p["containerPort"] for p in d["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    assert d["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert d["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}

    svc = one("Service", "web")
    assert svc["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()
    [p] = svc["spec"]["ports"]
    assert p["port"] == 80 and ports[p["targetPort"]] == 8080

    ann = web["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == ports["admin"]
    assert ann["prometheus.io/path"] == "/metrics"


def test_rules_configmap_is_mounted_as_a_directory():
    web = one("Deployment", "web")
    d = containers(web)["decorator"]
    [mount] = [m for m in d["volumeMounts"] if m["mountPath"] == env(d)["RULES"]]
    assert "subPath" not in mount and mount.get("readOnly") is True
    volumes = {v["name"]: v for v in web["spec"]["template"]["spec"]["volumes"]}
    cm_name = volumes[mount["name"]]["configMap"]["name"]
    cm = one("ConfigMap", cm_name)
    assert "rules.yaml" in cm["data"] and "404.html" in cm["data"]
    assert not any(m.get("subPath") for c in containers(web).values() for m in c.get("volumeMounts", []))


def test_dashboard_is_reachable_where_the_sidecars_push():
    dash = one("Deployment", "decorator-dashboard")
    svc = one("Service", "decorator-dashboard")
    url = env(containers(one("Deployment", "web"))["decorator"])["DASHBOARD"]
    m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
    assert m and m.group(1) == svc["metadata"]["name"] and int(m.group(2)) == svc["spec"]["ports"][0]["port"]
    [c] = dash["spec"]["template"]["spec"]["containers"]
    assert c["args"][0] == "dashboard"
    port = int(c["args"][c["args"].index("--port") + 1])
    target = svc["spec"]["ports"][0]["targetPort"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[target] == port
    assert svc["spec"]["selector"].items() <= dash["spec"]["template"]["metadata"]["labels"].items()
    db = c["args"][c["args"].index("--db") + 1]
    assert any(db.startswith(m["mountPath"] + "/") for m in c["volumeMounts"]), "SQLite on a writable volume"
    assert dash["spec"]["strategy"]["type"] == "Recreate", "one SQLite writer at a time"


def test_shutdown_timing_matches_the_drain_timeout():
    web = one("Deployment", "web")
    c = containers(web)
    args = c["decorator"]["args"]
    assert args[0] == "run"
    drain = int(args[args.index("--drain-timeout") + 1].rstrip("s"))
    assert drain == DRAIN_TIMEOUT_S
    sidecar_stop = prestop_seconds(c["decorator"]) + drain
    # the app must outlive the sidecar's drain, and the kubelet must not SIGKILL before either is done
    assert prestop_seconds(c["web"]) >= sidecar_stop
    grace = web["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > max(sidecar_stop, prestop_seconds(c["web"]))
    strategy = web["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


@pytest.mark.parametrize("name", ["web", "decorator-dashboard"])
def test_containers_are_locked_down_and_sized(name):
    dep = one("Deployment", name)
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)


# -- the rules inside the ConfigMap -----------------------------------------------------------------------

def _decorator_validate(*args: str) -> subprocess.CompletedProcess:
    try:
        import decorator.rules.commands  # noqa: F401
    except ImportError as e:
        pytest.skip(f"`decorator validate` is not available yet ({e})")
    return subprocess.run([sys.executable, "-m", "decorator", "validate", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)


def test_rules_configmap_validates_as_a_manifest():
    proc = _decorator_validate(str(K8S / "rules-configmap.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_configmap_validates_as_the_mounted_directory(tmp_path):
    from kubelet_volume import ConfigMapVolume, configmap_payload

    vol = ConfigMapVolume(tmp_path / "rules")
    vol.write(configmap_payload((K8S / "rules-configmap.yaml").read_text()))
    proc = _decorator_validate(str(vol.root))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_rules_configmap_reports_lines_in_the_manifest(tmp_path):
    text = (K8S / "rules-configmap.yaml").read_text()
    broken = text.replace("cooldown: 60s", "cooldwn: 60s")
    assert broken != text
    bad = tmp_path / "rules-configmap.yaml"
    bad.write_text(broken)
    proc = _decorator_validate(str(bad))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(i for i, ln in enumerate(broken.splitlines(), 1) if "cooldwn" in ln)
    assert re.search(rf"{re.escape(str(bad))}:{line}:\d+: .*cooldwn", proc.stdout + proc.stderr), \
        proc.stdout + proc.stderr
