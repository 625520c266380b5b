"""The Helm chart: lints, renders valid least-privilege objects for each way it is used, rejects bad values."""

import asyncio
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from harness.pss import restricted_violations
from sftop import policy
from sftop.crd import admission_yaml, crd, policy_crd, policy_crd_yaml
from sftop.rbac import RULES, rules_yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sftop"
TOOL = Path(__file__).with_name("helm_tool.py")


def python312() -> str:
    """An interpreter helm-sdkpy runs on (>= 3.12): SFTOP_HELM_PYTHON, python3.12/3.13 on PATH, or pyenv's."""
    candidates = [os.environ.get("SFTOP_HELM_PYTHON"), shutil.which("python3.13"), shutil.which("python3.12")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python")), reverse=True)
    for candidate in filter(None, candidates):
        out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                             capture_output=True, text=True)
        if out.stdout.strip() == "True":
            return candidate
    pytest.fail("the chart tests need Python >= 3.12 for helm-sdkpy: set SFTOP_HELM_PYTHON")


@pytest.fixture(scope="session")
def helm_python() -> str:
    """helm-sdkpy's own environment, kept in the user's cache (never in the checkout) under the hash of its
    requirements; built once, in a folder of its own and renamed into place, so test workers can race for it."""
    import hashlib

    requirements = Path(__file__).with_name("requirements.txt")
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sftop"
    venv = cache / f"venv-helm-{key}"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import helm_sdkpy, yaml"]).returncode == 0:
        return str(python)
    partial = cache / f"venv-helm-{key}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([python312(), "-m", "venv", str(partial)], check=True)
    subprocess.run([partial / "bin" / "python", "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    shutil.rmtree(venv, ignore_errors=True)  # a broken one
    try:
        partial.rename(venv)
    except OSError:  # another worker's is in place
        shutil.rmtree(partial, ignore_errors=True)
    return str(python)


def lint(helm_python, values):
    out = subprocess.run([helm_python, str(TOOL), "lint", str(CHART), json.dumps(values)], capture_output=True,
                         text=True, env={**os.environ, "HELM_DRIVER": "memory"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["lint"]


async def render(helm_python, apiserver, tmp_path, values):
    url = str(apiserver.url).rstrip("/")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "sftop-system"}}],
        "users": [{"name": "test", "user": {"token": "test"}}]}))
    proc = await asyncio.create_subprocess_exec(
        helm_python, str(TOOL), "render", str(CHART), json.dumps(values), str(kubeconfig), "sftop", "sftop-system",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "HELM_DRIVER": "memory"})
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    answer = json.loads(out)
    if "error" in answer:
        return answer["error"]
    return [d for d in yaml.safe_load_all(answer["manifest"]) if d]


VARIANTS = {
    "default": {},
    "two-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "service-monitor": {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}},
    "network-policy": {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["172.18.0.2/32"]},
                                         "dns": {"cidrs": ["169.254.20.10/32"]}},
                       "watchNamespaces": ["team-a"]},
}


@pytest.mark.parametrize("variant", ["default", "non-default"])
def test_chart_lints(helm_python, variant):
    values = {} if variant == "default" else {**VARIANTS["two-namespaces"], **VARIANTS["service-monitor"],
                                              "logging": {"level": "DEBUG", "format": "text"}, "replicaCount": 0}
    result = lint(helm_python, values)
    assert result["Errors"] is None, result


def test_a_bad_value_fails_lint(helm_python):
    assert lint(helm_python, {"replicaCount": "two"})["Errors"]


async def test_a_network_policy_without_the_api_servers_address_is_refused(helm_python, apiserver, tmp_path):
    error = await render(helm_python, apiserver, tmp_path, {"networkPolicy": {"enabled": True}})
    assert isinstance(error, str) and "networkPolicy.apiServer.cidrs" in error and "get endpoints kubernetes" in error


async def test_a_bad_value_is_rejected_by_the_schema_with_the_field_named(helm_python, apiserver, tmp_path):
    error = await render(helm_python, apiserver, tmp_path, {"replicaCount": "two"})
    assert isinstance(error, str) and "/replicaCount" in error and "want integer" in error
    error = await render(helm_python, apiserver, tmp_path, {"loging": {"level": "INFO"}})
    assert isinstance(error, str) and "loging" in error


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_rendered_objects_are_valid_and_least_privilege(helm_python, apiserver, tmp_path, variant):
    # a cluster with the prometheus-operator's CRD, for the ServiceMonitor
    apiserver.resources["monitoring.coreos.com/v1/servicemonitors"] = dict(
        kind="ServiceMonitor", singular="servicemonitor", namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"})
    objects = await render(helm_python, apiserver, tmp_path, VARIANTS[variant])
    assert isinstance(objects, list), objects
    kinds = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
        if obj["kind"] == "ServiceMonitor":  # a prometheus-operator CRD: no schema in kubernetes-validate
            assert obj["spec"]["endpoints"][0]["port"] == "metrics"
            continue
        kubernetes_validate.validate(obj, "1.32.0", strict=True)
    # the CRDs are the generated ones
    crds = {c["metadata"]["name"]: c for c in kinds["CustomResourceDefinition"]}
    assert crds["sftjobs.sftop.dev"]["spec"] == crd()["spec"]
    assert crds["sftpolicies.sftop.dev"]["spec"] == policy_crd()["spec"]
    assert all(c["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"} for c in crds.values())
    # the policy: the SFTPolicy (after the CRDs exist: a hook), the admission policy and its binding, the operator
    # enforcing the same one
    assert "SFTPolicy" not in kinds, "a hook, not in the release's manifest: Helm cannot map its kind before its CRD"
    sftpolicy, = [o.raw for (r, _, _), o in apiserver.objects.items() if r.plural == "sftpolicies"]
    assert sftpolicy["metadata"]["name"] == "default"
    assert sftpolicy["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade,post-rollback"
    policy.PolicySpec.model_validate(sftpolicy["spec"])
    vap, = kinds["ValidatingAdmissionPolicy"]
    binding, = kinds["ValidatingAdmissionPolicyBinding"]
    assert vap["spec"] == policy.admission_policy()["spec"]
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["paramRef"] == {"name": "default", "parameterNotFoundAction": "Allow"}
    # the operator: one replica at a time, hardened, probed
    deployment = kinds["Deployment"][0]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SFTOP_NAMESPACES"] == ",".join(VARIANTS[variant].get("watchNamespaces", []))
    assert env["SFTOP_POLICY"] == "default"
    # users' roles, aggregated into Kubernetes' own
    by_name = {r["metadata"]["name"]: r for r in kinds["ClusterRole"]}
    assert by_name["sftop-edit"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert by_name["sftop-view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in by_name["sftop-view"]["rules"])
    operator_roles = [r for name, r in by_name.items() if name in ("sftop", "sftop-crds")]
    # RBAC: exactly the operator's rules, no wildcards, scoped as the values say
    roles = operator_roles + kinds.get("Role", [])
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
    if VARIANTS[variant].get("watchNamespaces"):
        assert sorted(r["metadata"]["namespace"] for r in kinds["Role"]) == sorted(VARIANTS[variant]["watchNamespaces"])
        assert all(r["rules"] == RULES for r in kinds["Role"])
        cluster_rules = [rule for r in operator_roles for rule in r["rules"]]
        assert cluster_rules == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                                  "verbs": ["list", "watch"]},
                                 {"apiGroups": ["sftop.dev"], "resources": ["sftpolicies"], "verbs": ["get"]}]
    else:
        assert "Role" not in kinds and by_name["sftop"]["rules"] == RULES
    if variant == "service-monitor":
        assert kinds["ServiceMonitor"][0]["metadata"]["labels"]["release"] == "kps" and "Service" in kinds
    if variant == "network-policy":
        network_policies_let_through_only_what_sftop_needs(kinds["NetworkPolicy"], deployment)


def network_policies_let_through_only_what_sftop_needs(policies, deployment):
    """The rendered policies, as an enforcing network plugin applies them (harness.netpol): the operator reaches the
    API server, DNS and the trainers' progress port, and nothing else; a multi-node run's pods reach each other."""
    from harness.netpol import External, Pod, allowed

    operator = Pod(deployment["metadata"]["namespace"], deployment["spec"]["template"]["metadata"]["labels"])
    trainer = Pod("team-a", {"app.kubernetes.io/name": "sftop-trainer", "sftop.dev/sftjob": "chat"})
    other_trainer = Pod("team-a", {"app.kubernetes.io/name": "sftop-trainer", "sftop.dev/sftjob": "chat"})
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    stranger = Pod("team-a", {"app": "notebook"})
    assert allowed(policies, operator, External("172.18.0.2"), 6443), "the operator reaches the API server"
    assert allowed(policies, operator, dns, 53, "UDP") and allowed(policies, operator, dns, 53, "TCP")
    assert allowed(policies, operator, External("169.254.20.10"), 53, "UDP"), "a node-local DNS cache"
    assert not allowed(policies, operator, External("169.254.20.10"), 80)
    assert allowed(policies, operator, trainer, 8080), "the operator reads a trainer's progress"
    assert not allowed(policies, operator, trainer, 22)
    assert not allowed(policies, operator, External("172.18.0.3"), 6443), "no other address"
    assert not allowed(policies, operator, External("140.82.112.3"), 443), "nothing outside the cluster"
    assert not allowed(policies, operator, stranger, 8080), "no other pod"
    assert not allowed(policies, operator, Pod("kube-system", {"k8s-app": "metrics-server"}), 53, "UDP")
    assert allowed(policies, trainer, other_trainer, 29400), "a multi-node run's rendezvous"
    assert not allowed(policies, stranger, trainer, 8080), "only the operator reads progress"


def test_chart_files_are_the_generated_crd_and_rules():
    assert (CHART / "files" / "sftjobs.sftop.dev.yaml").read_text() == (ROOT / "crds" / "sftjobs.sftop.dev.yaml").read_text()
    assert (CHART / "files" / "sftpolicies.sftop.dev.yaml").read_text() == policy_crd_yaml()
    assert (ROOT / "crds" / "sftpolicies.sftop.dev.yaml").read_text() == policy_crd_yaml()
    assert (CHART / "files" / "admission-policy.yaml").read_text() == admission_yaml(), \
        "run `sftop crd --admission > helm/sftop/files/admission-policy.yaml`"
    assert (CHART / "files" / "rbac-rules.yaml").read_text() == rules_yaml()


def test_every_value_is_documented():
    """Each value carries a `# --` comment, unless it sits inside a documented value or is a group of them."""
    lines = [line for line in (CHART / "values.yaml").read_text().splitlines() if line.strip()]
    documented_parents: list[tuple[int, bool]] = []  # (indent, documented) of the open keys above
    for i, line in enumerate(lines):
        if line.strip().startswith(("#", "-")):
            continue
        indent = len(line) - len(line.lstrip())
        while documented_parents and documented_parents[-1][0] >= indent:
            documented_parents.pop()
        documented = lines[i - 1].strip().startswith("# --") if i else False
        key, _, value = line.strip().partition(":")
        group = value.strip() == "" and i + 1 < len(lines) and \
            len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent and not documented
        if not (documented or group or any(d for _, d in documented_parents)):
            pytest.fail(f"values.yaml: {key} has no '# --' comment")
        documented_parents.append((indent, documented))


def test_schema_covers_every_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])
    import jsonschema

    jsonschema.validate(values, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "replicaCount": "two"}, schema)


def test_the_chart_readme_lists_every_value_with_its_default():
    """helm/sftop/README.md's values table is generated from values.yaml (`python tests/helm/chart_readme.py`):
    a value added, renamed or given another default without regenerating it fails here."""
    import chart_readme

    readme = (CHART / "README.md").read_text()
    values = (CHART / "values.yaml").read_text()
    assert readme == chart_readme.render(readme, values), "run: python tests/helm/chart_readme.py"
    assert "| trainer.storageRequests | bool | `false` |" in readme
    assert len(chart_readme.documented_values(values)) > 40
    changed = values.replace("defaultCpu: \"4\"", "defaultCpu: \"8\"")
    assert chart_readme.render(readme, changed) != readme


async def test_the_installed_policy_refuses_at_apply_what_its_values_forbid(helm_python, apiserver, tmp_path):
    """The chart installed with a policy in its values: the emulated API server, running the installed
    ValidatingAdmissionPolicy with the installed SFTPolicy as its parameter, refuses what the values forbid."""
    values = {"policy": {"spec": {"maxGpusPerJob": 4, "profiles": {
        "a100-80g": {"nodeSelector": {"pool": "a100"}, "gpuMemory": "80Gi"}}}}}
    objects = await render(helm_python, apiserver, tmp_path, values)
    assert isinstance(objects, list), objects

    async def apply(name, resources):
        return await apiserver.post("/apis/sftop.dev/v1alpha1/namespaces/team-a/sftjobs", json={
            "apiVersion": "sftop.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name},
            "spec": {"model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct"}},
                     "dataset": {"inline": [{"prompt": "hi", "completion": "hello"}]},
                     "output": {"pvc": {"claimName": "adapters"}}, "resources": resources}})

    resp = await apply("too-big", {"gpus": 8})
    assert resp.status == 403 and "policy rule maxGpusPerJob" in (await resp.json())["message"]
    resp = await apply("unknown-pool", {"gpus": 1, "profile": "h100"})
    message = (await resp.json())["message"]
    assert resp.status == 403 and "policy rule profiles" in message and "profiles: a100-80g" in message
    resp = await apply("fits", {"gpus": 4, "profile": "a100-80g"})
    assert resp.status == 201, await resp.text()


def exported_metric_names() -> set[str]:
    """Every series name the operator's /metrics and a trainer pod's /metrics can carry, from their registries."""
    from types import SimpleNamespace

    from sftop.metrics import Metrics
    from sftop_trainer import progress

    controller = SimpleNamespace(sftjobs=SimpleNamespace(phases=lambda: [], active=lambda: []), queue=[],
                                 poller=SimpleNamespace(readings={}))
    trainer = progress.Progress("0badc0de")
    trainer.update(**{key: 1.0 for key, _, _ in progress.METRICS})
    registries = [Metrics(controller).registry, progress.registry(trainer)]
    names = set()
    for registry in registries:
        for family in registry.collect():
            names |= {family.name, f"{family.name}_total"} if family.type == "counter" else {family.name}
    return names


async def test_the_dashboard_queries_only_metrics_sftop_exports_and_ships_for_grafanas_sidecar(helm_python, apiserver,
                                                                                             tmp_path):
    import re

    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries.append(dashboard["templating"]["list"][1]["definition"])
    used = {m for q in queries for m in re.findall(r"\bsftop_[a-z_]+", q)}
    assert used and used <= exported_metric_names(), used - exported_metric_names()
    # runs by phase and namespace, queue waits, GPU-seconds and tokens by namespace, live progress, errors
    for metric in ("sftop_sftjobs", "sftop_gpu_seconds_total", "sftop_trained_tokens_total",
                   "sftop_sftjob_progress_percent", "sftop_sftjob_loss", "sftop_reconcile_errors_total"):
        assert metric in used
    assert any('phase="Queued"' in q for q in queries)
    objects = await render(helm_python, apiserver, tmp_path, {"metrics": {"dashboard": {"enabled": True}}})
    config_map, = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["sftop.json"]) == dashboard
    default = await render(helm_python, apiserver, tmp_path, {})
    assert not [o for o in default if o["kind"] == "ConfigMap"], "off by default"


async def test_a_default_install_admits_every_example(helm_python, apiserver, tmp_path):
    """`helm install` enforces its default SFTPolicy: every manifest in examples/ is one it admits (the chart's own
    trainer image is allowed at any tag, as GitOps examples pin it), and another image is not."""
    objects = await render(helm_python, apiserver, tmp_path, {})
    assert isinstance(objects, list), objects
    sftpolicy, = [o.raw for (r, _, _), o in apiserver.objects.items() if r.plural == "sftpolicies"]
    assert sftpolicy["spec"]["images"][:2] == ["ghcr.io/sftop/sftop-trainer:", "ghcr.io/sftop/sftop-trainer@"]
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "SFTJob"):
            ns = doc["metadata"].get("namespace", "team-a")
            resp = await apiserver.post(f"/apis/sftop.dev/v1alpha1/namespaces/{ns}/sftjobs", json=doc)
            assert resp.status == 201, (path.name, await resp.text())
    doc["metadata"]["name"] = "elsewhere"
    doc["spec"]["image"] = "docker.io/someone/trainer:latest"
    resp = await apiserver.post(f"/apis/sftop.dev/v1alpha1/namespaces/{ns}/sftjobs", json=doc)
    assert resp.status == 403 and "policy rule image" in (await resp.json())["message"]
