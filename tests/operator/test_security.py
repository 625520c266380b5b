"""Nothing an SFTJob says reaches outside its namespace, and the hub token stays a secret."""

import base64
import logging

import pytest

from harness.cluster import NS, apply, condition, objs, sftjob, status_of, wait_for
from sftop.validate import validate_document

TOKEN = "hf_superSecretTokenValue123"


async def test_hub_token_never_appears_in_configmaps_status_events_or_logs(apiserver, operator, caplog):
    caplog.set_level(logging.DEBUG)
    await apiserver.post(f"/api/v1/namespaces/{NS}/secrets", json={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"},
        "data": {"token": base64.b64encode(TOKEN.encode()).decode()}})
    await apply(apiserver, sftjob(hubTokenSecret={"name": "hf-token"}))
    await wait_for(lambda: objs(apiserver, "batch/v1/jobs"))
    await wait_for(lambda: condition(status_of(apiserver), "Accepted"))
    encoded = base64.b64encode(TOKEN.encode()).decode()
    for where, text in (("configmaps", str(objs(apiserver, "v1/configmaps"))),
                        ("status", str(status_of(apiserver))),
                        ("events", str(objs(apiserver, "v1/events"))),
                        ("the operator's log", caplog.text),
                        ("the Job", str(objs(apiserver, "batch/v1/jobs")))):
        assert TOKEN not in text and encoded not in text, f"the token leaked into {where}"


REJECTED = [
    ("a hostPath volume for the model", {"model": {"hostPath": {"path": "/models"}}}, "spec.model.hostPath",
     "unknown field"),
    ("an absolute data path", {"dataset": {"pvc": {"claimName": "data", "path": "/etc/shadow.jsonl"}}},
     "spec.dataset.pvc.path", "absolute"),
    ("'..' out of the output claim", {"output": {"pvc": {"claimName": "out"}, "path": "../../other-team"}},
     "spec.output.path", ".."),
    ("another namespace's claim", {"model": {"pvc": {"claimName": "models", "path": "m", "namespace": "team-b"}}},
     "spec.model.pvc.namespace", "unknown field"),
    ("a namespace-qualified claim name", {"output": {"pvc": {"claimName": "team-b/adapters"}}},
     "spec.output.pvc.claimName", "Kubernetes object name"),
    ("another namespace's Secret", {"hubTokenSecret": {"name": "hf", "namespace": "kube-system"}},
     "spec.hubTokenSecret.namespace", "unknown field"),
]


@pytest.mark.parametrize("what,patch,field,words", REJECTED, ids=[r[0] for r in REJECTED])
def test_reaching_outside_the_namespace_is_rejected(what, patch, field, words):
    doc = sftjob()
    doc["spec"].update(patch)
    problems = [p for p in validate_document(doc) if p.path == field]
    assert problems and any(words in p.message for p in problems), [str(p) for p in validate_document(doc)]


async def test_the_api_server_rejects_them_too(apiserver):
    doc = sftjob(output={"pvc": {"claimName": "adapters"}, "path": "../../other-team"})
    resp = await apply(apiserver, doc)
    assert resp.status == 422 and "spec.output.path" in (await resp.json())["message"]
