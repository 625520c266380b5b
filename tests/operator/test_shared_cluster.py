"""The operator in a shared cluster, as a real API server and Kueue behave there: other teams' Pods and Jobs, watch
gaps that lose deletions, admission plugins that check owner references, Kueue's own controllers."""

from harness.cluster import apply, objs, requests, sftjob, status_of, wait_for
from test_platform_faults import run_to_success, succeed

OTHER = "team-b"


async def foreign(emu, count, start=0):
    """`count` Pods and Jobs of another team, none of them the operator's."""
    for i in range(start, start + count):
        meta = {"name": f"web-{i}", "namespace": OTHER, "labels": {"app": "web"}}
        resp = await emu.post(f"/api/v1/namespaces/{OTHER}/pods", json={
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
        assert resp.status == 201, await resp.text()
        resp = await emu.post(f"/apis/batch/v1/namespaces/{OTHER}/jobs", json={
            "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
        assert resp.status == 201, await resp.text()


async def test_other_teams_pods_and_jobs_never_reach_the_operator(apiserver, operator):
    await foreign(apiserver, 5)  # while the watches run
    await apply(apiserver, sftjob())
    job, pod = await run_to_success(apiserver)
    since = len(apiserver.log)
    apiserver.compact()
    apiserver.cut_watches()  # the watches resume to 410 Gone and list again
    await foreign(apiserver, 5, start=5)
    await succeed(apiserver, job, pod)
    await wait_for(lambda: any(r.params.get("watch") != "true" and r.url.path.endswith("/pods")
                               for r in apiserver.log[since:]), timeout=15)
    sent = {key: n for key, n in apiserver.sent.items() if key[1] == OTHER}
    assert sent == {}, f"the API server sent the operator other teams' objects: {sent}"
    assert apiserver.sent[("v1/pods", "team-a")] and apiserver.sent[("batch/v1/jobs", "team-a")]
    for r in requests(apiserver, "GET", "/pods") + requests(apiserver, "GET", "/jobs"):
        if r.url.path in ("/api/v1/pods", "/apis/batch/v1/jobs"):
            assert r.params.get("labelSelector") == "sftop.dev/sftjob", r.url
            assert r.params.get("watch") == "true" or r.params.get("limit"), f"an unpaged list: {r.url}"
    assert len(objs(apiserver, "v1/pods", OTHER)) == 10
    assert status_of(apiserver)["phase"] == "Succeeded"
