"""The emulated API server copies the real one where the operator depends on it; each rule, checked."""

import asyncio
import json

import kmock

from harness.apiserver import SFTJOBS, matches
from harness.cluster import NS, apply, obj, patch, sftjob

PATH = f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs"


async def create_cm(emu, body):
    return await emu.post(f"/api/v1/namespaces/{NS}/configmaps", json=body)


async def test_create_fills_in_identity_namespace_and_answers_201(apiserver):
    resp = await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})
    assert resp.status == 201
    meta = (await resp.json())["metadata"]
    assert meta["namespace"] == NS and meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"]
    assert meta["generation"] == 1


async def test_generate_name(apiserver):
    resp = await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "ev."}})
    name = (await resp.json())["metadata"]["name"]
    assert name.startswith("ev.") and len(name) == 8


async def test_create_of_an_existing_object_is_a_conflict(apiserver):
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
    await create_cm(apiserver, body)
    assert (await create_cm(apiserver, body)).status == 409


async def test_resource_version_and_generation(apiserver):
    await apply(apiserver, sftjob())
    before = obj(apiserver, SFTJOBS, "chat")["metadata"]
    await patch(apiserver, f"{PATH}/chat", {"metadata": {"labels": {"a": "b"}}})
    after_label = obj(apiserver, SFTJOBS, "chat")["metadata"]
    assert int(after_label["resourceVersion"]) > int(before["resourceVersion"]) and after_label["generation"] == 1
    await patch(apiserver, f"{PATH}/chat", {"spec": {"training": {"maxSteps": 5}}})
    assert obj(apiserver, SFTJOBS, "chat")["metadata"]["generation"] == 2
    await patch(apiserver, f"{PATH}/chat/status", {"status": {"phase": "Running"}})
    assert obj(apiserver, SFTJOBS, "chat")["metadata"]["generation"] == 2


async def test_status_subresource_split(apiserver):
    manifest = sftjob()
    manifest["status"] = {"phase": "Succeeded"}
    await apply(apiserver, manifest)
    # status is ignored on create; what is read back is the CRD's default for status, as a real server defaults
    # what it reads from etcd (and the defaults inside the default, as its structural defaulting recurses)
    default = {"observedGeneration": 0, "conditions": [], "previousRuns": [], "checkpoints": []}
    assert obj(apiserver, SFTJOBS, "chat")["status"] == default
    await patch(apiserver, f"{PATH}/chat", {"status": {"phase": "Succeeded"}})
    assert obj(apiserver, SFTJOBS, "chat")["status"] == default, "status is ignored on the main resource"
    await patch(apiserver, f"{PATH}/chat/status", {"status": {"phase": "Running"}, "spec": {"method": "full"}})
    stored = obj(apiserver, SFTJOBS, "chat")
    assert stored["status"] == {**default, "phase": "Running"} and stored["spec"]["method"] == "lora"


async def test_schema_defaults_pruning_and_rejection(apiserver):
    manifest = sftjob()
    manifest["spec"]["training"]["learningrate"] = 0.1
    assert (await apply(apiserver, manifest)).status == 201
    spec = obj(apiserver, SFTJOBS, "chat")["spec"]
    assert "learningrate" not in spec["training"], "unknown fields are pruned"
    assert spec["method"] == "lora" and spec["training"]["perDeviceTrainBatchSize"] == 4, "defaults are applied"

    strict = await apiserver.post(f"{PATH}?fieldValidation=Strict", json=sftjob("strict", epochz=1))
    assert strict.status == 422 and "epochz" in (await strict.json())["message"]

    bad = sftjob("bad", method="full", quantization={})
    resp = await apply(apiserver, bad)
    body = await resp.json()
    assert resp.status == 422 and body["reason"] == "Invalid"
    assert 'SFTJob.sftop.dev "bad" is invalid' in body["message"] and "only to method qlora" in body["message"]

    resp = await apiserver.patch(f"{PATH}/chat", json={"spec": {"training": {"learningRate": -1}}},
                                 headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 422 and "spec.training.learningRate" in (await resp.json())["message"]


async def test_list_has_kind_and_filters_by_label(apiserver):
    for name, team in (("a", "x"), ("b", "y")):
        await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": name, "labels": {"team": team}}})
    resp = await apiserver.get(f"/api/v1/namespaces/{NS}/configmaps?labelSelector=team%3Dx")
    body = await resp.json()
    assert body["kind"] == "ConfigMapList" and body["apiVersion"] == "v1" and body["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in body["items"]] == ["a"]
    assert matches({"a": "1"}, "a,!b,a!=2") and not matches({"a": "1"}, "a=2")


async def test_list_pages_with_limit_and_continue(apiserver):
    for name in "abcde":
        await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    seen, token, versions = [], None, set()
    while True:
        query = "limit=2" + (f"&continue={token}" if token else "")
        body = await (await apiserver.get(f"/api/v1/namespaces/{NS}/configmaps?{query}")).json()
        seen += [i["metadata"]["name"] for i in body["items"]]
        versions.add(body["metadata"]["resourceVersion"])
        token = body["metadata"].get("continue")
        if not token:
            break
        assert len(body["items"]) == 2
    assert seen == list("abcde") and len(versions) == 1


async def test_watch_sends_only_what_its_label_selector_matches(apiserver):
    async def watch():
        resp = await apiserver.get(f"/api/v1/namespaces/{NS}/configmaps?watch=true&labelSelector=team%3Dx")
        names = []
        async for line in resp.content:
            if line.strip():
                names.append(json.loads(line)["object"]["metadata"]["name"])
                if names[-1] == "last":
                    return names

    await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "old-y",
                                                                                      "labels": {"team": "y"}}})
    task = asyncio.ensure_future(watch())
    await asyncio.sleep(0.2)
    for name, team in (("y", "y"), ("x", "x"), ("last", "x")):
        await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": name, "labels": {"team": team}}})
    assert await asyncio.wait_for(task, 5) == ["x", "last"]
    assert apiserver.sent[("v1/configmaps", NS)] == 2


async def test_garbage_collector_deletes_dependents(apiserver):
    owner = await (await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap",
                                               "metadata": {"name": "owner"}})).json()
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    child = await (await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap",
                                               "metadata": {"name": "child", "ownerReferences": [ref]}})).json()
    grandchild_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "child", "uid": child["metadata"]["uid"]}
    await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "grandchild", "ownerReferences": [grandchild_ref]}})
    await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated"}})
    await apiserver.delete(f"/api/v1/namespaces/{NS}/configmaps/owner")
    assert obj(apiserver, "v1/configmaps", "child") is None and obj(apiserver, "v1/configmaps", "grandchild") is None
    assert obj(apiserver, "v1/configmaps", "unrelated") is not None


async def test_fault_injection(apiserver):
    apiserver.fail_next("POST", "/configmaps", 503)
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
    assert (await create_cm(apiserver, body)).status == 503
    assert (await create_cm(apiserver, body)).status == 201
    assert (kmock.resource("v1/configmaps"), NS, "a") in apiserver.objects


async def test_table_for_kubectl_get_has_the_printer_columns(apiserver):
    await apply(apiserver, sftjob())
    await patch(apiserver, f"{PATH}/chat/status", {"status": {"phase": "Running", "progress": {"percent": 40,
                                                                                              "loss": 1.5}}})
    resp = await apiserver.get(PATH, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    body = await resp.json()
    assert body["kind"] == "Table"
    names = [c["name"] for c in body["columnDefinitions"]]
    assert names[:6] == ["Name", "Phase", "Model", "Method", "Progress", "Loss"]
    cells = dict(zip(names, body["rows"][0]["cells"]))
    assert (cells["Phase"], cells["Progress"], cells["Loss"], cells["Method"]) == ("Running", 40, 1.5, "lora")


async def test_field_selector_and_core_discovery(apiserver):
    for name, kind in (("a", "SFTJob"), ("b", "Pod")):
        await apiserver.post(f"/api/v1/namespaces/{NS}/events", json={
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
            "involvedObject": {"kind": kind, "name": "chat"}, "reason": "R", "message": "m"})
    resp = await apiserver.get(f"/api/v1/namespaces/{NS}/events?fieldSelector=involvedObject.kind%3DSFTJob")
    assert [e["metadata"]["name"] for e in (await resp.json())["items"]] == ["a"]
    discovery = await (await apiserver.get("/api/v1")).json()
    assert discovery["groupVersion"] == "v1"
    sft = await (await apiserver.get("/apis/sftop.dev/v1alpha1")).json()
    status = next(r for r in sft["resources"] if r["name"] == "sftjobs/status")
    assert status["shortNames"] == [] and status["categories"] == []


async def test_owner_reference_enforcement_needs_update_on_the_owners_finalizers(apiserver):
    owner = await (await apply(apiserver, sftjob())).json()
    ref = {"apiVersion": "sftop.dev/v1alpha1", "kind": "SFTJob", "name": "chat", "uid": owner["metadata"]["uid"],
           "blockOwnerDeletion": True, "controller": True}
    as_operator = {"User-Agent": "sftop-operator/test"}
    apiserver.owner_rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]
    resp = await apiserver.post(f"/api/v1/namespaces/{NS}/configmaps", headers=as_operator, json={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "ownerReferences": [ref]}})
    assert resp.status == 403 and "blockOwnerDeletion" in (await resp.json())["message"]
    apiserver.owner_rules.append({"apiGroups": ["sftop.dev"], "resources": ["sftjobs/finalizers"],
                                  "verbs": ["update"]})
    resp = await apiserver.post(f"/api/v1/namespaces/{NS}/configmaps", headers=as_operator, json={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "ownerReferences": [ref]}})
    assert resp.status == 201


async def test_garbage_collector_deletes_an_object_whose_owners_are_all_gone(apiserver):
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "no-such-uid"}
    resp = await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "orphan", "ownerReferences": [ref]}})
    assert resp.status == 201 and obj(apiserver, "v1/configmaps", "orphan") is None
    await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    uid = obj(apiserver, "v1/configmaps", "owner")["metadata"]["uid"]
    for name, owner_uid in (("child", uid), ("child-of-an-earlier-owner", "uid-of-a-deleted-owner-of-that-name")):
        await create_cm(apiserver, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                               "uid": owner_uid}]}})
    assert obj(apiserver, "v1/configmaps", "child") is not None
    assert obj(apiserver, "v1/configmaps", "child-of-an-earlier-owner") is None


async def test_a_merge_patch_removes_a_nested_field_set_to_null(apiserver):
    """RFC 7386 as the API server applies it to a custom resource: `kubectl apply` of a manifest without a field the
    last one had sends it as null, and the stored object loses it at any depth."""
    await apply(apiserver, sftjob("chat", promotion={"minimum": {"exactMatch": 0.5}, "pin": "0badc0de"}))
    path = f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat"
    await patch(apiserver, path, {"spec": {"promotion": {"pin": None}}})
    stored = obj(apiserver, SFTJOBS, "chat")
    assert stored["spec"]["promotion"] == {"minimum": {"exactMatch": 0.5}, "maximum": {}, "notWorseThan": "promoted",
                                           "tolerance": {}}
    assert stored["metadata"]["generation"] == 2
