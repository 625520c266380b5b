"""How GitOps tools read an SFTJob's health: Argo CD's health script (run in a Lua 5.1 VM, as Argo CD runs it, on
the fixtures of its upstream-style health_test.yaml), Flux's CEL health checks from examples/flux, and kstatus,
on a fixture of every phase and of the reasons users meet."""

from pathlib import Path

import pytest
import yaml

from harness import argocd, flux, kstatus
from sftop import api

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "examples" / "argocd" / "resource_customizations" / "sftop.dev" / "SFTJob"
SCRIPT = (HEALTH / "health.lua").read_text()
CASES = argocd.cases(HEALTH)
FLUX = yaml.safe_load((ROOT / "examples" / "flux" / "kustomization.yaml").read_text())
# What each tool calls the same state: Argo CD health -> (kstatus, Flux CEL)
SAME = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress", "Suspended": "InProgress"}


@pytest.mark.parametrize("name,obj,expected", CASES, ids=[c[0] for c in CASES])
def test_argocd_health_script_gives_the_expected_health(name, obj, expected):
    assert argocd.health(SCRIPT, obj) == expected


def test_argocd_fixtures_cover_every_phase_and_are_all_tested():
    phases = {obj.get("status", {}).get("phase") for _, obj, _ in CASES}
    assert set(api.PHASES) <= phases
    listed = {name for name, _, _ in CASES}
    assert listed == {f"testdata/{p.name}" for p in (HEALTH / "testdata").glob("*.yaml")}
    for _, obj, _ in CASES:  # each fixture is an SFTJob the CRD accepts
        api.SFTJob.model_validate(obj)


def test_argocd_reads_healthy_degraded_suspended_and_a_stale_generation_as_progressing():
    by_name = {name.split("/")[1].removesuffix(".yaml"): health for name, _, health in CASES}
    assert by_name["succeeded"]["status"] == "Healthy"
    assert by_name["failed-oom"] == {"status": "Degraded", "message": "Failed (OOMKilled): the trainer ran out of "
                                     "memory (container memory limit); raise spec.resources.memory or lower the "
                                     "batch size"}
    assert by_name["suspended"]["status"] == by_name["queued-quota"]["status"] == "Suspended"
    assert "insufficient unused quota for nvidia.com/gpu" in by_name["queued-quota"]["message"]
    assert by_name["queued-preempted"]["status"] == "Suspended"
    assert by_name["stale-generation"]["status"] == "Progressing"  # its phase says Succeeded, for generation 2


def test_the_argocd_cm_snippet_carries_the_tested_script():
    cm = yaml.safe_load((ROOT / "examples" / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["metadata"] == {"name": "argocd-cm", "namespace": "argocd", "labels": {
        "app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}}
    assert cm["data"] == {"resource.customizations.health.sftop.dev_SFTJob": SCRIPT}
    docs = (ROOT / "docs" / "gitops.md").read_text()
    block = next(b for b in docs.split("```yaml\n")[1:] if "resource.customizations.health" in b).split("```")[0]
    assert yaml.safe_load(block) == {"data": cm["data"]}, "docs/gitops.md shows the tested script"


def test_a_lua_error_is_not_swallowed():
    with pytest.raises(Exception):
        argocd.health("return obj.status.phase.nothing.here", {"status": {}})


@pytest.mark.parametrize("name,obj,expected", CASES, ids=[c[0] for c in CASES])
def test_kstatus_and_flux_cel_agree_with_argocd(name, obj, expected):
    check = FLUX["spec"]["healthCheckExprs"][0]
    if "status" not in obj:
        # No status at all (an API server without the CRD's status default): kstatus' documented corner case reads
        # it as Current, and Flux's CEL cannot evaluate; the default makes it the InProgress of new-defaulted.yaml.
        assert kstatus.compute(obj).status == "Current"
        with pytest.raises(flux.EvaluationError):
            flux.evaluate(check, obj)
    else:
        assert kstatus.compute(obj).status == SAME[expected["status"]]
        assert flux.evaluate(check, obj) == SAME[expected["status"]]


def test_flux_example_checks_sftjobs_both_ways():
    spec = FLUX["spec"]
    assert spec["healthChecks"] == [{"apiVersion": api.API_VERSION, "kind": api.KIND, "name": "team-a-nightly",
                                     "namespace": "team-a"}]
    check = spec["healthCheckExprs"][0]
    assert (check["apiVersion"], check["kind"]) == (api.API_VERSION, api.KIND)
    assert set(check) == {"apiVersion", "kind", "inProgress", "failed", "current"}


def test_kstatus_port_follows_cli_utils_rules():
    """The rules as cli-utils writes them, on objects that are not SFTJobs."""
    assert kstatus.compute({"metadata": {"generation": 1}}).status == "Current"  # no status, no conditions
    assert kstatus.compute({"metadata": {"deletionTimestamp": "2026-11-20T10:00:00Z"}}).status == "Terminating"
    stale = kstatus.compute({"kind": "X", "metadata": {"generation": 3}, "status": {"observedGeneration": 2}})
    assert (stale.status, stale.reason) == ("InProgress", "LatestGenerationNotObserved")
    both = {"status": {"conditions": [{"type": "Stalled", "status": "True", "message": "m"},
                                      {"type": "Reconciling", "status": "True"}]}}
    assert kstatus.compute(both).status == "Failed"  # the first that holds decides
    assert kstatus.compute({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}).status == "InProgress"
    assert kstatus.compute({"status": {"conditions": [{"type": "Ready", "status": "True"},
                                                      {"type": "Reconciling", "status": "False"}]}}).status == "Current"
