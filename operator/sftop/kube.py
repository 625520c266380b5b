"""The operator's calls to the Kubernetes API: create-or-read children, patch status, post events.

Everything here is idempotent and safe to repeat: a create that finds the object (409) reads it instead; a
transient failure (5xx, 429, a dropped connection) is retried with backoff before it reaches the caller, never
sooner than the API server's Retry-After. These calls block: the controller makes them from its thread pool.
Reads of SFTJobs, Jobs and Pods come from the watch cache (sftop.controller), not from here.
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
import time
import uuid
from typing import Any, Callable, TypeVar

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from sftop import api
from sftop.settings import Settings, _version

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
MAX_RETRY_AFTER = 60.0
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSIONS = ("v1beta2", "v1beta1")
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
VISIBILITY_VERSIONS = ("v1beta2", "v1beta1")
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


class KueueAbsent(Exception):
    """The cluster serves no Kueue API."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def transient(e: Exception) -> bool:
    if isinstance(e, ApiException):
        return e.status in (429, 500, 502, 503, 504) or e.status == 0
    # A refused or dropped connection (an API server restarting) reaches here as urllib3's error.
    return isinstance(e, (ConnectionError, TimeoutError, OSError, urllib3.exceptions.HTTPError))


def retry_after(e: Exception) -> float | None:
    """The seconds an API server asks a client to wait (429 Too Many Requests, 503), from Retry-After."""
    headers = getattr(e, "headers", None) or {}
    try:
        value = float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)


def retrying(call: Callable[[], T]) -> T:
    """Run `call`, retrying transient API failures with backoff, waiting at least what Retry-After asks; the last
    failure is raised."""
    for delay in RETRY_DELAYS:
        try:
            return call()
        except Exception as e:  # only what `transient` accepts is retried
            if not transient(e):
                raise
            delay = max(delay, retry_after(e) or 0.0)
            log.warning("transient API error, retrying in %.1fs: %s", delay, str(e).splitlines()[0][:200])
            time.sleep(delay)
    return call()


class Kube:
    """Thin, typed access to the API groups the operator uses."""

    def __init__(self, settings: Settings):
        if settings.k8s_server:
            config = kubernetes.client.Configuration()
            config.host = settings.k8s_server
            config.verify_ssl = False
            client = kubernetes.client.ApiClient(config)
        else:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            client = kubernetes.client.ApiClient()
        client.user_agent = f"sftop-operator/{_version()}"  # what audit logs (and the tests) see
        self.client = client
        self.core = kubernetes.client.CoreV1Api(client)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.instance = socket.gethostname()
        self.kueue_version: str | None = None

    def close(self) -> None:
        self.client.close()

    # ----------------------------------------------------------------------------------- children

    def _create_or_read(self, create: Callable[[], Any], read: Callable[[], Any]) -> dict[str, Any]:
        try:
            obj = retrying(create)
        except ApiException as e:
            if e.status != 409:
                raise
            obj = retrying(read)
        return self.client.sanitize_for_serialization(obj)

    def ensure_config_map(self, body: dict[str, Any]) -> dict[str, Any]:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self._create_or_read(lambda: self.core.create_namespaced_config_map(ns, body),
                                    lambda: self.core.read_namespaced_config_map(name, ns))

    def ensure_service(self, body: dict[str, Any]) -> dict[str, Any]:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self._create_or_read(lambda: self.core.create_namespaced_service(ns, body),
                                    lambda: self.core.read_namespaced_service(name, ns))

    def ensure_job(self, body: dict[str, Any]) -> dict[str, Any]:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self._create_or_read(lambda: self.batch.create_namespaced_job(ns, body),
                                    lambda: self.batch.read_namespaced_job(name, ns))

    def ensure_claim(self, body: dict[str, Any]) -> dict[str, Any]:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self._create_or_read(lambda: self.core.create_namespaced_persistent_volume_claim(ns, body),
                                    lambda: self.core.read_namespaced_persistent_volume_claim(name, ns))

    def _read(self, read: Callable[[], Any]) -> dict[str, Any] | None:
        """An object as stored, or None when there is none (404)."""
        try:
            obj = retrying(read)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return self.client.sanitize_for_serialization(obj)

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(lambda: self.batch.read_namespaced_job(name, namespace))

    def read_sftjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(lambda: self.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name))

    def read_policy(self, name: str) -> dict[str, Any] | None:
        return self._read(lambda: self.custom.get_cluster_custom_object(api.GROUP, api.VERSION, "sftpolicies", name))

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        pods = retrying(lambda: self.core.list_namespaced_pod(namespace, label_selector=selector))
        return [self.client.sanitize_for_serialization(p) for p in pods.items]

    def set_job_suspended(self, namespace: str, name: str, suspend: bool) -> dict[str, Any]:
        obj = retrying(lambda: self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}}))
        return self.client.sanitize_for_serialization(obj)

    def stop_job(self, namespace: str, name: str) -> None:
        """Delete a superseded run's Job and its pod (the pod gets SIGTERM and saves a checkpoint)."""
        try:
            retrying(lambda: self.batch.delete_namespaced_job(
                name, namespace, body=kubernetes.client.V1DeleteOptions(propagation_policy="Background")))
        except ApiException as e:
            if e.status != 404:
                raise

    # -------------------------------------------------------------------------------------- Kueue

    def _kueue(self, call: Callable[[str], Any]) -> Any:
        """`call(version)` against the Kueue API version this cluster serves (v1beta2, else v1beta1); raises
        KueueAbsent when neither is served."""
        versions = [self.kueue_version] if self.kueue_version else list(KUEUE_VERSIONS)
        for version in versions:
            try:
                out = retrying(lambda: call(version))
            except ApiException as e:
                if e.status == 404:
                    continue
                raise
            self.kueue_version = version
            return out
        self.kueue_version = None
        raise KueueAbsent("Kueue's API (kueue.x-k8s.io workloads) is not served in this cluster")

    def workload_of(self, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
        """The Kueue Workload of a Job: by Kueue's job-uid label, else by its owner reference. KueueAbsent when
        the cluster has no Kueue."""
        uid = job["metadata"].get("uid")

        def find(version: str) -> list[dict[str, Any]]:
            items = self.custom.list_namespaced_custom_object(KUEUE_GROUP, version, namespace, "workloads",
                                                              label_selector=f"{JOB_UID_LABEL}={uid}")["items"]
            if not items:
                items = [w for w in self.custom.list_namespaced_custom_object(
                    KUEUE_GROUP, version, namespace, "workloads")["items"]
                    if any(o.get("uid") == uid for o in w["metadata"].get("ownerReferences") or [])]
            return items

        items = self._kueue(find)
        return max(items, key=lambda w: w["metadata"].get("creationTimestamp") or "") if items else None

    def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Deactivate (or reactivate) a Workload: Kueue's own way to stop an admitted Job and keep it stopped."""
        self._kueue(lambda v: self.custom.patch_namespaced_custom_object(KUEUE_GROUP, v, namespace, "workloads",
                                                                         name, {"spec": {"active": active}}))

    def local_queue(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._kueue(lambda v: self.custom.get_namespaced_custom_object(KUEUE_GROUP, v, namespace,
                                                                                  "localqueues", name))
        except KueueAbsent:
            return None

    def pending_workloads(self, namespace: str, local_queue: str) -> list[dict[str, Any]] | None:
        """Kueue's visibility API: the LocalQueue's pending Workloads with their positions; None when it does not
        answer (it is an aggregated API that clusters may not serve)."""
        for version in VISIBILITY_VERSIONS:
            try:
                request = self.client.param_serialize(
                    "GET", f"/apis/{VISIBILITY_GROUP}/{version}/namespaces/{{namespace}}/localqueues/{{name}}"
                           f"/pendingworkloads", path_params={"namespace": namespace, "name": local_queue},
                    header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
                response = self.client.call_api(*request, _request_timeout=5)
                response.read()
            except Exception as e:  # a position in the queue is a courtesy
                log.debug("Kueue's visibility API did not answer: %s", e)
                return None
            if response.status == 404:
                continue
            if response.status != 200:
                log.debug("Kueue's visibility API answered %s", response.status)
                return None
            return json.loads(response.data).get("items") or []
        return None

    def set_job_label(self, namespace: str, name: str, key: str, value: str) -> dict[str, Any]:
        obj = retrying(lambda: self.batch.patch_namespaced_job(name, namespace, {"metadata": {"labels": {key: value}}}))
        return self.client.sanitize_for_serialization(obj)

    # --------------------------------------------------------------------------------- references

    def exists(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        read = {"ConfigMap": self.core.read_namespaced_config_map,
                "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim}[kind]
        return self._read(lambda: read(name, namespace))

    # ------------------------------------------------------------------------------ SFTJob status

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Patch an SFTJob's status; returns the SFTJob as stored (with its new resourceVersion), or None when it is
        gone."""
        return self._read(lambda: self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": patch}))

    def post_event(self, owner: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about the SFTJob, as `kubectl describe sftjob` lists them. Never fatal."""
        meta = owner["metadata"]
        stamp = now()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message[:1024], "type": kind,
            "source": {"component": "sftop-operator"}, "reportingComponent": "sftop.dev/operator",
            "reportingInstance": self.instance, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            retrying(lambda: self.core.create_namespaced_event(meta["namespace"], event))
        except Exception as e:  # an event is a courtesy; the status already says the same
            log.warning("could not post event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], e)
