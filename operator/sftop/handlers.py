"""kopf wiring: thin handlers that feed watch events to the controller's watch cache (sftop.cache), which keeps them
and queues the SFTJob concerned. Run with `sftop operator`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from sftop import api, names
from sftop.controller import Controller
from sftop.kube import Kube
from sftop.settings import Settings

log = logging.getLogger(__name__)

STATE: dict[str, Any] = {}  # the running controller and its task, for the handlers below
CHILD_RESOURCES = (("batch", "v1", "jobs"), ("", "v1", "pods"))  # watched only when labelled SFTJOB_LABEL
LIST_CHUNK = 500  # objects per page of a (re)list: the API server's and our memory stay bounded


def settings() -> Settings:
    if "settings" not in STATE:
        STATE["settings"] = Settings.from_env()
    return STATE["settings"]


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    if settings().k8s_server:
        return kopf.ConnectionInfo(server=settings().k8s_server, insecure=True)
    return kopf.login_via_client(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    ours = STATE.get("settings") or Settings.from_env()
    STATE["settings"] = ours
    # Only on.event handlers: kopf writes no state, annotation or finalizer onto SFTJobs.
    settings.posting.enabled = False  # the controller posts its own, user-facing events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    # kopf's `labels=` filters below apply after an object arrived: without a selector on the request itself, a
    # shared cluster's every Pod and Job would be listed, sent and parsed. These go on the LIST and WATCH URLs.
    for resource in CHILD_RESOURCES:
        settings.watching.label_selectors[resource] = names.SFTJOB_LABEL
    settings.watching.chunk_size = LIST_CHUNK  # a relist pages through the children instead of one huge answer
    if not ours.clusterwide:
        settings.scanning.disabled = True  # a namespaced operator may not list namespaces
    controller = Controller(ours, Kube(ours))
    STATE["controller"] = controller
    STATE["task"] = asyncio.create_task(controller.run(), name="sftop-workers")
    if ours.metrics_port:
        from sftop import metrics

        STATE["metrics"] = await metrics.serve(controller, ours.metrics_port)
    logger.info(f"sftop operator: watching {'all namespaces' if ours.clusterwide else ', '.join(ours.namespaces)}, "
                f"trainer image {ours.trainer_image}, {ours.workers} workers")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    task = STATE.pop("task", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    runner = STATE.pop("metrics", None)
    if runner is not None:
        await runner.cleanup()
    controller = STATE.pop("controller", None)
    if controller is not None:
        controller.kube.close()


@kopf.on.probe(id="sftjobs")
def probe(**_: Any) -> int:
    controller = STATE.get("controller")
    if controller is None or STATE["task"].done():
        raise kopf.PermanentError("the reconcile workers are not running")
    return len(controller.sftjobs)


# Async on purpose: they only touch the controller's cache and queue, which live on the event loop.
@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def sftjob_event(event: kopf.RawEvent, **_: Any) -> None:
    STATE["controller"].observe_sftjob(event.get("type"), event["object"])


@kopf.on.event("batch", "v1", "jobs", labels={names.SFTJOB_LABEL: kopf.PRESENT})
async def job_event(event: kopf.RawEvent, **_: Any) -> None:
    STATE["controller"].observe_job(event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods", labels={names.SFTJOB_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    STATE["controller"].observe_pod(event.get("type"), event["object"])


def run(ours: Settings) -> None:
    """Run the operator until it is stopped (SIGTERM/SIGINT)."""
    STATE["settings"] = ours
    kopf.configure(verbose=ours.log_level == "DEBUG",
                   log_format=kopf.LogFormat.JSON if ours.log_format == "json" else kopf.LogFormat.PLAIN)
    logging.getLogger().setLevel(ours.log_level)
    kopf.run(standalone=True, clusterwide=ours.clusterwide, namespaces=list(ours.namespaces),
             liveness_endpoint=f"http://0.0.0.0:{ours.health_port}/healthz" if ours.health_port else None)
