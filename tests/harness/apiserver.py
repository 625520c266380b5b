"""A Kubernetes API server for tests: kmock's KubernetesEmulator, with the gaps to a real API server that the
operator depends on closed. Each rule names the real behaviour it copies; tests/operator/test_harness.py
checks each one.

| rule | what a real API server does |
|---|---|
| identity | fills in metadata.uid, creationTimestamp, resourceVersion and generation on create |
| namespace | takes metadata.namespace from the URL of a namespaced create |
| generateName | names an object `<generateName><5 random characters>` when it has no name |
| 201 | answers a create with 201 Created |
| resourceVersion | bumps metadata.resourceVersion on every write |
| generation | bumps metadata.generation when the spec (not status or metadata) changes |
| status subresource | for resources with a status subresource, ignores status on create and on writes to the main resource, and writes only status through /status |
| CRD schema | drops null values of non-nullable fields, prunes unknown fields (rejects them with fieldValidation=Strict), applies defaults (status's too, recursively, as structural defaulting does on every read from etcd), and rejects an SFTJob that breaks the CRD's schema or CEL rules with 422 Invalid |
| list kind | answers LIST with kind `<Kind>List`, apiVersion and metadata.resourceVersion |
| label selectors | filters LIST and WATCH (the initial objects and every event) by `labelSelector` (equality, inequality, existence) and `fieldSelector` (equality): the server, not the client, leaves foreign objects out (k8s.io/apiserver pkg/storage/cacher: `filterWithAttrsAndPrefixFunction`, watch events filtered by the request's selectors); `sent` counts the objects each resource's LISTs and WATCHes sent, by namespace |
| chunked lists | pages LIST with `limit` and `continue` (k8s.io/apiserver pkg/storage/etcd3/store.go `GetList`): every page but the last carries `metadata.continue`, all pages the first page's resourceVersion (docs: "Retrieving large results sets in chunks") |
| OpenAPI v3 | serves `/openapi/v3` and each group version's document with its PATCH operations, their kind and the `fieldValidation` parameter: what kubectl and Helm read to let the server validate fields (client-go openapi3, cli-runtime `QueryParamVerifierV3`) |
| tables | answers `Accept: ...;as=Table` (kubectl get) for SFTJobs with the CRD's printer columns |
| discovery | core group version `v1` (kmock says `/v1`); subresources without short names or categories; /version says 1.32 |
| owner references | OwnerReferencesPermissionEnforcement, on (OpenShift's default): a request of the operator (by User-Agent, authorized by `owner_rules`, sftop.rbac.RULES) that sets an ownerReference with `blockOwnerDeletion: true` (new, or turned true) is answered 403 Forbidden unless those rules allow `update` on the owner's `<plural>/finalizers` in its group; an update that changes ownerReferences also needs `delete` on the object (kubernetes plugin/pkg/admission/gc/gc_admission.go: `newBlockingOwnerDeletionRefs`, `ownerRefToDeleteAttributeRecords`; docs: admission controllers, "OwnerReferencesPermissionEnforcement") |
| garbage collector | deletes the objects whose ownerReferences name a deleted object (background propagation), and an object created with ownerReferences none of whose owners exists (a dangling owner: kubernetes pkg/controller/garbagecollector/garbagecollector.go `attemptToDeleteItem` deletes a dependent whose owners are all absent, `classifyReferences`; an owner is looked up by apiVersion, kind, namespace and name, and one of that name with another uid is absent, `isDangling`) |
| admission policies | runs every stored ValidatingAdmissionPolicy and its bindings on creates and updates (not on subresources), with its parameters (the cluster-scoped SFTPolicy among them), and refuses as the API server does: harness.admission says how, after kubernetes staging/src/k8s.io/apiserver/pkg/admission/plugin/policy |
| faults | can answer chosen requests with an error (`fail_next`; 429 with Retry-After, as API Priority and Fairness does), delay every request (`latency`), end every watch stream (`cut_watches`), hold one resource's watches unanswered until released (`hold_watches`, `release_watches`: a watch gap; what changed meanwhile is never sent as events, and a resumed watch gets 410 once compacted), delay one resource's watch events (`watch_delay`: the watch cache feeds watchers after the write was answered, k8s.io/apiserver pkg/storage/cacher, so a client's own write's response can be newer than the events still on their way), and then answer watches that resume from an older resourceVersion with 410 Gone (`compact`, as after etcd compaction), and run a hook right after a chosen write is stored (`after_write`: a SIGKILL of the operator) |

kmock matches each request against its whole request history, which makes a long test or a benchmark
quadratic; this server matches against the requests in flight only, and records every request in `log`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import json
import datetime
import itertools
import random
import re
import string
import time
import uuid
from typing import Any, Callable

import aiohttp.web
import kmock
from kmock._internal import dicts, enums
from kmock._internal.k8s import KubernetesError

from sftop import api
from sftop.patch import merge_patch
from sftop.rbac import RULES, allows
from sftop.crd import open_api_schema
from sftop.validate import apply_defaults, schema_problems

from harness import admission

SFTJOBS = f"{api.GROUP}/{api.VERSION}/{api.PLURAL}"
SFTJOB_INFO = dict(kind=api.KIND, singular=api.SINGULAR, namespaced=True, shortnames=set(api.SHORT_NAMES),
                   categories=set(api.CATEGORIES), subresources={"status"},
                   verbs={"get", "list", "watch", "create", "update", "patch", "delete"})
SFTPOLICIES = f"{api.GROUP}/{api.VERSION}/sftpolicies"
SFTPOLICY_INFO = dict(kind="SFTPolicy", singular="sftpolicy", namespaced=False, categories={"sftop"},
                      verbs={"get", "list", "watch", "create", "update", "patch", "delete"})
ADMISSION = ("validatingadmissionpolicies", "validatingadmissionpolicybindings")
# Built-in kinds with a status subresource that the operator and the node agent write.
STATUS_RESOURCES = {"batch/v1/jobs", "v1/pods", "v1/persistentvolumeclaims", SFTJOBS}
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
KUEUE_RESOURCES = [("workloads", "Workload", True), ("localqueues", "LocalQueue", True),
                   ("clusterqueues", "ClusterQueue", False), ("resourceflavors", "ResourceFlavor", False),
                   ("workloadpriorityclasses", "WorkloadPriorityClass", False)]
VISIBILITY_PATH = re.compile(rf"/apis/visibility\.kueue\.x-k8s\.io/{KUEUE_VERSION}/namespaces/(?P<namespace>[^/]+)"
                             r"/localqueues/(?P<name>[^/]+)/pendingworkloads")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _res(resource: Any) -> str:
    return f"{resource.group}/{resource.version}/{resource.plural}".lstrip("/")


def prune(schema: dict[str, Any], value: Any, path: str = "") -> tuple[Any, list[str]]:
    """Drop the fields the schema does not know, as the API server does; returns (pruned, their paths)."""
    dropped: list[str] = []
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out = {}
        for key, sub in value.items():
            if sub is None and not schema["properties"].get(key, {}).get("nullable"):
                continue  # null on a non-nullable field means "unset"
            if key in schema["properties"]:
                out[key], more = prune(schema["properties"][key], sub, f"{path}.{key}".lstrip("."))
                dropped += more
            else:
                dropped.append(f"{path}.{key}".lstrip("."))
        return out, dropped
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = [prune(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in items], [d for _, ds in items for d in ds]
    return value, dropped


def matches(labels: dict[str, str], selector: str) -> bool:
    """A label selector's equality, inequality and existence terms (`a=b,c!=d,e,!f`)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class ApiServer(kmock.KubernetesEmulator):
    """The emulator with the real server's rules above. Use as `async with ApiServer() as emu`."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.resources[SFTJOBS] = dict(SFTJOB_INFO)
        self.resources[SFTPOLICIES] = dict(SFTPOLICY_INFO)
        self.admission_keys: set[Any] = set()  # the ValidatingAdmissionPolicies and bindings ever created
        self.revision = itertools.count(1)
        self.schema = open_api_schema()
        self.faults: list[tuple[str, str, int, float | None]] = []  # (method, path fragment, status, Retry-After)
        self.log: list[Any] = []  # every request, in order
        self.stamps: list[float] = []  # when each request of `log` arrived (monotonic)
        self.latency = 0.0  # seconds added to every request
        self.hooks: list[tuple[str, str, Callable[[Any], None]]] = []  # (method, path fragment, after the write)
        self.compacted = 0  # watches resuming from a resourceVersion below this get 410 Gone
        self.watch_cut = asyncio.Event()
        self.held: set[str] = set()  # plurals whose watches wait for `released`
        self.watch_delay: dict[str, float] = {}  # plural -> seconds each of its watch events is held back
        self.plural_cuts: dict[str, asyncio.Event] = {}  # set to end the watches of one resource
        self.released = asyncio.Event()
        self.inflight: dict[int, Any] = {}
        self.owner_rules: list[dict[str, Any]] | None = list(RULES)  # None: no OwnerReferencesPermissionEnforcement
        self.status_resources = set(STATUS_RESOURCES)
        self.visibility: Any = None  # Kueue's visibility API, once a Kueue (harness.kueue) is installed
        self.sent: collections.Counter[tuple[str, str | None]] = collections.Counter()  # (resource, namespace)
        self[kmock.action.CREATE] << 201 << (lambda request: request.data)

    def install_kueue(self, visibility: Any) -> None:
        """Serve Kueue's API group (its CRDs) and its visibility API, as a cluster with Kueue installed does.
        `visibility(namespace, local_queue)` answers the pending-workloads query."""
        for plural, kind, namespaced in KUEUE_RESOURCES:
            self.resources[f"{KUEUE_GROUP}/{KUEUE_VERSION}/{plural}"] = dict(
                kind=kind, singular=kind.lower(), namespaced=namespaced, subresources={"status"},
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"})
            self.status_resources.add(f"{KUEUE_GROUP}/{KUEUE_VERSION}/{plural}")
        self.visibility = visibility

    # ---------------------------------------------------------------------------------------- faults

    def fail_next(self, method: str, path_part: str, status: int = 500, times: int = 1,
                  retry_after: float | None = None) -> None:
        """Answer the next `times` requests whose method and path match with `status` (and a Retry-After header)."""
        self.faults += [(method.upper(), path_part, status, retry_after)] * times

    def _fault(self, request: Any) -> tuple[KubernetesError, float | None] | None:
        for i, (method, part, status, retry_after) in enumerate(self.faults):
            if request.method.value.upper() == method and part in request.url.path:
                del self.faults[i]
                reason = {409: "AlreadyExists", 429: "TooManyRequests", 500: "InternalError",
                          503: "ServiceUnavailable"}.get(status, "Error")
                details = {"retryAfterSeconds": int(retry_after)} if retry_after is not None else None
                return KubernetesError(status=status, reason=reason, message=f"injected {status} for tests",
                                       details=details), retry_after
        return None

    def after_write(self, method: str, path_part: str, hook: Callable[[Any], None]) -> None:
        """Run `hook(request)` once, right after the next matching write is stored and before it is answered."""
        self.hooks.append((method.upper(), path_part, hook))

    def cut_watches(self, plural: str | None = None) -> None:
        """End every open watch stream (or those of one resource), as an API server restart or a load balancer's idle
        timeout does."""
        if plural is None:
            self.watch_cut.set()
            self.watch_cut = asyncio.Event()
        else:
            self.plural_cuts.pop(plural, asyncio.Event()).set()

    def hold_watches(self, plural: str) -> None:
        """Cut the watches of `plural` and hold every new one unanswered until `release_watches`: events meanwhile are
        lost to the operator, as in a network partition between it and the API server."""
        self.held.add(plural)
        self.released = asyncio.Event()
        self.cut_watches(plural)

    def release_watches(self) -> None:
        self.held.clear()
        self.released.set()

    async def restart(self, server: kmock.Server, down: float = 1.0) -> kmock.Server:
        """Stop `server` (its connections refused, its watches cut) and serve the same state on the same port again
        after `down` seconds, as an API server restart in front of the same etcd does. Returns the new server."""
        port = server.port
        self.cut_watches()
        await asyncio.sleep(0.1)
        # Its connections end at once, as a stopped process's do: aiohttp's graceful shutdown waited a minute for
        # the handlers of the watches that clients had opened again meanwhile (its timeout of 0 means no limit).
        server.server.runner._shutdown_timeout = 0.01
        await server.__aexit__(None, None, None)
        await asyncio.sleep(down)
        again = kmock.Server(self, port=port)
        await again.__aenter__()
        return again

    def compact(self) -> None:
        """Forget the history up to now: a watch that resumes from an older resourceVersion gets 410 Gone and must
        list again."""
        self.compacted = next(self.revision)

    # -------------------------------------------------------------------------------------- requests

    def __iter__(self):
        return iter(list(self.inflight.values()))

    async def _handle(self, request: Any):
        self.log.append(request)
        self.stamps.append(time.monotonic())
        self.inflight[id(request)] = request
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            response = await self._serve(request)
            for i, (method, part, hook) in enumerate(self.hooks):
                if request.method.value.upper() == method and part in request.url.path and \
                        getattr(response, "status", 200) < 300:
                    del self.hooks[i]
                    hook(request)
                    break
            return response
        finally:
            self.inflight.pop(id(request), None)

    async def _serve_watch(self, request: Any):
        while request.resource.plural in self.held:
            await self.released.wait()
        since = request.params.get("resourceVersion")
        if since and since.isdigit() and int(since) < self.compacted:
            yield b""
            yield {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                               "status": "Failure", "reason": "Expired", "code": 410,
                                               "message": f"too old resource version: {since} ({self.compacted})"}}
            return
        cuts = (self.watch_cut, self.plural_cuts.setdefault(request.resource.plural, asyncio.Event()))
        stream = self._selected(request, super()._serve_watch(request)).__aiter__()
        waits = [asyncio.ensure_future(c.wait()) for c in cuts]
        stop = asyncio.ensure_future(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED))
        following: asyncio.Future | None = None
        try:
            while True:
                following = asyncio.ensure_future(stream.__anext__())
                await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    return  # cut: the stream ends, as a dropped connection does
                try:
                    event = following.result()
                except StopAsyncIteration:
                    return
                following = None
                yield event
        finally:
            for wait in (stop, *waits):
                wait.cancel()
            if following is not None and not following.done():
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
            await stream.aclose()

    async def _selected(self, request: Any, stream: Any):
        """A watch stream with only the events whose object matches the request's selectors, counted in `sent`."""
        labels, fields = request.params.get("labelSelector"), request.params.get("fieldSelector")
        async for event in stream:
            if isinstance(event, dict) and isinstance(event.get("object"), dict) and \
                    event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                meta = event["object"].get("metadata") or {}
                if (labels and not matches(meta.get("labels") or {}, labels)) or \
                        (fields and not field_matches(event["object"], fields)):
                    continue
                self.sent[(_res(request.resource), meta.get("namespace"))] += 1
                if self.watch_delay.get(request.resource.plural):
                    await asyncio.sleep(self.watch_delay[request.resource.plural])
            yield event

    async def _serve(self, request: Any):
        if request.url.path.startswith("/openapi/v3"):
            return self._openapi_v3(request.url.path.removeprefix("/openapi/v3").strip("/"))
        found = VISIBILITY_PATH.fullmatch(request.url.path)
        if found and self.visibility is not None:
            ns, queue = found.group("namespace"), found.group("name")
            return aiohttp.web.json_response({
                "kind": "PendingWorkloadsSummary", "apiVersion": f"visibility.kueue.x-k8s.io/{KUEUE_VERSION}",
                "metadata": {"name": queue, "namespace": ns}, "items": self.visibility(ns, queue)})
        if request.resource is not None:
            try:
                fault = self._fault(request)
                if fault is not None:
                    error, retry_after = fault
                    response = await self._render_error(error)
                    if retry_after is not None:
                        response.headers["Retry-After"] = f"{retry_after:g}"
                    return response
                await self._admit(request)
            except KubernetesError as e:
                return await self._render_error(e)
        response = await super()._handle(request)
        if request.resource is not None and request.action == enums.action.CREATE and \
                getattr(response, "status", 500) < 300 and isinstance(request.data, dict):
            await self._collect_if_dangling(request)
        if request.resource is not None and request.action == enums.action.DELETE and request.name:
            key = (request.resource, request.namespace, request.name)
            last = self.objects[key].last if key in self.objects else None
            uid = (last or {}).get("metadata", {}).get("uid") if last is not None else None
            if uid:
                await self._collect_garbage(uid)
        return response

    def _openapi_v3(self, group_version: str) -> Any:
        """OpenAPI v3 discovery, as far as clients read it to choose server-side field validation: the root lists
        each group version's document, and each document's PATCH operations carry their kind and the
        `fieldValidation` query parameter (kube-apiserver since 1.27; client-go's openapi3 Root and cli-runtime's
        QueryParamVerifierV3 `supportsQueryParamV3`, through which kubectl and Helm, which validates hooks
        strictly, skip client-side schema validation)."""
        versions: dict[str, list[Any]] = {}
        for res in list(self.resources):
            gv = f"apis/{res.group}/{res.version}" if res.group else f"api/{res.version}"
            versions.setdefault(gv, []).append(res)
        if not group_version:
            return aiohttp.web.json_response({"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash=0"}
                                                        for gv in versions}})
        if group_version not in versions:
            return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)
        paths = {}
        for res in versions[group_version]:
            info = self.resources[res]
            scope = "namespaces/{namespace}/" if info.namespaced else ""
            paths[f"/{group_version}/{scope}{res.plural}/{{name}}"] = {"patch": {
                "x-kubernetes-group-version-kind": {"group": res.group, "version": res.version, "kind": info.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]}}
        return aiohttp.web.json_response({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
                                          "paths": paths})

    async def _admit(self, request: Any) -> None:
        res = _res(request.resource)
        data = request.data
        if request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits,
                                                                             k=5))
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["resourceVersion"] = str(next(self.revision))
            meta["generation"] = 1
            if res in self.status_resources and res != "v1/pods":
                data.pop("status", None)
            if res == SFTJOBS:
                self._check_sftjob(request, data)
            self._check_owner_references(request, meta.get("ownerReferences") or [], None)
            if request.resource.plural in ADMISSION:
                self.admission_keys.add((request.resource, None, meta.get("name")))
            self._admission(request, data, None)
        elif request.action == enums.action.UPDATE and isinstance(data, (dict, list)):
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return  # the emulator answers 404
            old = copy.deepcopy(self.objects[key].raw)
            if isinstance(data, list):  # a JSON patch: turn it into the merge patch of its effect
                data = merge_patch(old, dict(dicts.patch_dict(old, data))) or {}
                object.__setattr__(request, "data", data)  # kmock's Request is frozen; the patch is ours to shape
            if "ownerReferences" in (data.get("metadata") or {}):
                self._check_owner_references(request, data["metadata"]["ownerReferences"] or [],
                                             old.get("metadata", {}).get("ownerReferences") or [])
            if res in self.status_resources:
                if request.subresource == "status":
                    for k in [k for k in data if k != "status"]:
                        del data[k]
                else:
                    data.pop("status", None)
            new = dicts.patch_dict(old, data)
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self.revision))
            if old.get("spec") != new.get("spec"):
                meta["generation"] = int(old.get("metadata", {}).get("generation") or 1) + 1
            if request.subresource is None:
                self._admission(request, dicts.patch_dict(old, data), old)
            if res == SFTJOBS and request.subresource != "status":
                new = dicts.patch_dict(old, data)
                self._check_sftjob(request, new)
                # defaults and pruning change the stored object: patch with the difference to the checked whole
                # (RFC 7386, as the API server stores the merged object: a field the patch set to null is gone at
                # any depth, such as `kubectl apply` removing spec.promotion.pin)
                data.clear()
                data.update(merge_patch({k: v for k, v in old.items() if k != "status"},
                                        {k: v for k, v in new.items() if k != "status"}) or {})

    def _admission(self, request: Any, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """ValidatingAdmissionPolicies and their bindings, as the API server's admission plugin runs them
        (harness.admission)."""
        live = [k for k in self.admission_keys if k in self.objects and not self.objects[k].deleted]
        if not live:
            return
        kinds = {k[0].plural: [] for k in live}
        for key in live:
            kinds.setdefault(key[0].plural, []).append(copy.deepcopy(self.objects[key].raw))
        operation = "CREATE" if request.action == enums.action.CREATE else "UPDATE"
        meta = obj.get("metadata") or {}
        denial = admission.admit(
            kinds.get("validatingadmissionpolicies", []), kinds.get("validatingadmissionpolicybindings", []),
            self._params, {"group": request.resource.group, "version": request.resource.version,
                           "resource": request.resource.plural, "subResource": request.subresource,
                           "operation": operation, "name": meta.get("name") or request.name,
                           "namespace": request.namespace}, copy.deepcopy(obj), copy.deepcopy(old))
        if denial is not None:
            raise KubernetesError(status=denial.status, reason=denial.reason, message=denial.message)

    def _params(self, kind: dict[str, Any], ref: dict[str, Any]) -> list[dict[str, Any]]:
        """The parameters a binding's paramRef names: one by name, or those its selector matches (the selector's
        matchLabels; `{}` is all of them)."""
        group, _, version = kind.get("apiVersion", "").rpartition("/")
        found = []
        for (res, ns, name), obj in list(self.objects.items()):
            if res.group != group or res.version != version or self.resources[res].kind != kind.get("kind") or \
                    obj.deleted or ns != ref.get("namespace"):
                continue
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if ref.get("name") == name or ("selector" in ref and all(
                    labels.get(k) == v for k, v in (ref["selector"].get("matchLabels") or {}).items())):
                found.append(copy.deepcopy(obj.raw))
        return found

    def _check_owner_references(self, request: Any, refs: list[dict[str, Any]], old: list[dict[str, Any]] | None) \
            -> None:
        """OwnerReferencesPermissionEnforcement for the operator's requests: `old` is None on create."""
        agent = request.headers.get("User-Agent") or ""
        if self.owner_rules is None or not agent.startswith(OPERATOR_AGENTS) or refs == (old or []):
            return
        if old is not None and not allows(self.owner_rules, request.resource.group, request.resource.plural,
                                          "delete"):
            raise KubernetesError(status=403, reason="Forbidden", message="cannot set an ownerRef on a resource "
                                  "you can't delete")
        was_blocking = {r.get("uid") for r in old or [] if r.get("blockOwnerDeletion")}
        for ref in refs:
            if not ref.get("blockOwnerDeletion") or ref.get("uid") in was_blocking:
                continue
            group = ref.get("apiVersion", "").rpartition("/")[0]
            plurals = [r.plural for r in self.resources if r.group == group and self.resources[r].kind == ref.get("kind")]
            if not plurals or not all(allows(self.owner_rules, group, f"{p}/finalizers", "update") for p in plurals):
                raise KubernetesError(
                    status=403, reason="Forbidden",
                    message=f"{_res(request.resource)} \"{request.data.get('metadata', {}).get('name')}\" is "
                            f"forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a resource you "
                            f"can't set finalizers on: no RBAC rule allows update on {group}/{plurals}/finalizers")

    def _check_sftjob(self, request: Any, obj: dict[str, Any]) -> None:
        pruned, dropped = prune(self.schema, obj)
        if dropped and request.params.get("fieldValidation") == "Strict":
            raise self._invalid(obj, [f'{d}: Invalid value: unknown field "{d.rsplit(".", 1)[-1]}"' for d in dropped])
        status = pruned.pop("status", None)
        pruned = apply_defaults(self.schema, pruned)
        problems = [str(p) for p in schema_problems(pruned)]
        if problems:
            raise self._invalid(obj, problems)
        if status is not None:
            pruned["status"] = status
        obj.clear()
        obj.update(pruned)

    @staticmethod
    def _invalid(obj: dict[str, Any], problems: list[str]) -> KubernetesError:
        name = obj.get("metadata", {}).get("name")
        return KubernetesError(
            status=422, reason="Invalid",
            message=f'{api.KIND}.{api.GROUP} "{name}" is invalid: [{", ".join(problems)}]',
            details={"name": name, "group": api.GROUP, "kind": api.KIND,
                     "causes": [{"reason": "FieldValueInvalid", "message": p, "field": p.split(":", 1)[0]}
                                for p in problems]})

    async def _collect_garbage(self, uid: str) -> None:
        """Background cascading deletion: dependents go after their owner, theirs after them."""
        await self._collect(lambda meta: any(o.get("uid") == uid for o in meta.get("ownerReferences") or []))

    async def _collect_if_dangling(self, request: Any) -> None:
        """A new object whose owners are all absent is collected at once (the real collector does so within moments
        of seeing it). An owner is looked up as the garbage collector's `isDangling` does
        (kubernetes/pkg/controller/garbagecollector/garbagecollector.go): by apiVersion, kind, the dependent's
        namespace (or none, for a cluster-scoped owner) and name; absent, or present under another uid, is
        absent."""
        meta = request.data.get("metadata") or {}
        refs = meta.get("ownerReferences") or []
        if refs and not any(self._owner_present(meta.get("namespace"), ref) for ref in refs):
            uid = meta.get("uid")
            await self._collect(lambda m: m.get("uid") == uid)

    def _owner_present(self, namespace: str | None, ref: dict[str, Any]) -> bool:
        group = ref.get("apiVersion", "").rpartition("/")[0]
        for res, info in list(self.resources.items()):
            if res.group != group or info.kind != ref.get("kind"):
                continue
            for ns in (namespace, None):
                key = (res, ns, ref.get("name"))
                if key in self.objects and not self.objects[key].deleted and \
                        self.objects[key].get("metadata", {}).get("uid") == ref.get("uid"):
                    return True
        return False

    async def _collect(self, collected: Callable[[dict], bool]) -> None:
        """Delete the objects whose metadata `collected` picks, then their dependents."""
        doomed = []
        async with self._lock:
            for key, obj in list(self.objects.items()):
                if obj.deleted:
                    continue
                meta = obj.get("metadata", {})
                if collected(meta):
                    raw = obj.raw
                    obj.delete()
                    await self._buses[key[0]].put({"type": "DELETED", "object": raw})
                    doomed.append(raw.get("metadata", {}).get("uid"))
        for child in doomed:
            if child:
                await self._collect_garbage(child)

    async def _serve_server_version(self, request: Any):
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}

    async def _serve_version(self, request: Any):
        answer = await super()._serve_version(request)
        if request.resource.group == "":
            answer["groupVersion"] = request.resource.version
        for res in answer["resources"]:
            if "/" in res["name"]:
                res.update(shortNames=[], categories=[], singularName="")
        return answer

    async def _serve_fetch(self, request: Any):
        answer = await super()._serve_fetch(request)
        if _wants_table(request) and _res(request.resource) == SFTJOBS:
            return table([answer])
        return answer

    async def _serve_list(self, request: Any):
        answer = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            answer["items"] = [o for o in answer["items"]
                               if matches(o.get("metadata", {}).get("labels") or {}, selector)]
        fields = request.params.get("fieldSelector")
        if fields:
            answer["items"] = [o for o in answer["items"] if field_matches(o, fields)]
        if _wants_table(request) and _res(request.resource) == SFTJOBS:
            return table(answer["items"])
        info = self.resources[request.resource]
        kind = info.kind if info is not None and info.kind else request.resource.plural.capitalize()
        answer["kind"] = f"{kind}List"
        answer["apiVersion"] = f"{request.resource.group}/{request.resource.version}".lstrip("/")
        answer["metadata"] = self._page(request, answer)
        for item in answer["items"]:
            self.sent[(_res(request.resource), item.get("metadata", {}).get("namespace"))] += 1
        return answer

    def _page(self, request: Any, answer: dict[str, Any]) -> dict[str, Any]:
        """Cut the list to `limit` items after the `continue` token's key; the list's metadata. The token carries
        the first page's resourceVersion and the last key sent, as the real one does (an opaque base64 JSON)."""
        answer["items"].sort(key=lambda o: (o.get("metadata", {}).get("namespace") or "",
                                            o.get("metadata", {}).get("name") or ""))
        token = request.params.get("continue")
        if token:
            state = json.loads(base64.urlsafe_b64decode(token))
            rv, after = state["rv"], tuple(state["start"])
            answer["items"] = [o for o in answer["items"] if (o["metadata"].get("namespace") or "",
                                                              o["metadata"]["name"]) > after]
        else:
            rv = str(next(self.revision))
        limit = int(request.params.get("limit") or 0)
        if limit <= 0 or len(answer["items"]) <= limit:
            return {"resourceVersion": rv}
        answer["items"] = answer["items"][:limit]
        last = answer["items"][-1]["metadata"]
        state = {"rv": rv, "start": [last.get("namespace") or "", last["name"]]}
        return {"resourceVersion": rv, "continue": base64.urlsafe_b64encode(json.dumps(state).encode()).decode()}


def field_matches(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, want = term.replace("==", "=").partition("=")
        value: Any = obj
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if str(value if value is not None else "") != want:
            return False
    return True


def _wants_table(request: Any) -> bool:
    return "as=Table" in (request.headers.get("Accept") or "")


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[*].b`, `.a[?(@.k=="v")].b`."""
    values = [obj]
    for token in re.findall(r'\.([A-Za-z0-9_-]+)|\[(\d+|\*|\?\(@\.([A-Za-z0-9_]+)==["\']([^"\']*)["\']\))\]', path):
        key, index, fkey, fval = token
        out = []
        for v in values:
            if key:
                if isinstance(v, dict) and key in v:
                    out.append(v[key])
            elif isinstance(v, list):
                if index == "*":
                    out += v
                elif fkey:
                    out += [i for i in v if isinstance(i, dict) and str(i.get(fkey)) == fval]
                elif int(index) < len(v):
                    out.append(v[int(index)])
        values = out
    return values


def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table of SFTJobs, as the API server renders the CRD's additionalPrinterColumns."""
    from sftop.crd import PRINTER_COLUMNS

    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    columns += [{"name": c["name"], "type": c["type"], "format": "", "description": c.get("description", ""),
                 "priority": c.get("priority", 0)} for c in PRINTER_COLUMNS]
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"]]
        for c in PRINTER_COLUMNS:
            found = jsonpath(obj, c["jsonPath"])
            if c["type"] == "date":
                cells.append(_age(found[0] if found else None))
            elif not found:
                cells.append(None)
            else:
                cells.append(",".join(str(v) for v in found) if len(found) > 1 else found[0])
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": obj["metadata"]}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"},
            "columnDefinitions": columns, "rows": rows}


OPERATOR_AGENTS = ("kopf/", "sftop-operator/")


def verb(request: Any) -> str:
    method = request.method.value.upper()
    if method == "GET":
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def forbidden_requests(emu: ApiServer, rules: list[dict[str, Any]]) -> list[str]:
    """The operator's requests (by User-Agent) that `rules` would not allow; discovery is open to everyone."""
    out = []
    for r in emu.log:
        if not (r.headers.get("User-Agent") or "").startswith(OPERATOR_AGENTS) or r.resource is None \
                or r.resource.plural is None:
            continue
        resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
        if not allows(rules, r.resource.group, resource, verb(r)):
            out.append(f"{verb(r)} {r.resource.group or 'core'}/{resource} ({r.method.value} {r.url.path_qs})")
    return sorted(set(out))
