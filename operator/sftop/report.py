"""What status says of a run, built from what was observed: the run's record (base_status), its live progress from
the trainer's endpoint, its usage (pod- and GPU-seconds), its pods, and once it ends its result, checkpoints and
serving handoff. Pure.
"""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

from sftop import api, lifecycle, names, render
from sftop.records import UNREACHABLE_AFTER, Decision, Observed, Reading

MAX_CHECKPOINTS = 21
MAX_POD_RECORDS = 32  # status.run.podSeconds keeps the newest attempts; older ones fold into one entry
ADAPTER_MOUNT = "/adapters"  # where the serving handoff assumes the output claim is mounted in the vLLM pod
PROGRESS_KEYS = ("step", "totalSteps", "percent", "epoch", "loss", "learningRate", "tokensPerSecond", "eta",
                 "evalLoss", "exactMatch")


def base_status(status: dict[str, Any], spec: api.SFTJobSpec, rid: str, seen: Observed,
                warm_start: names.ClaimPath | None) -> dict[str, Any]:
    """The status with the current run's record (status.run: id, Job name, output path, warm start, attempts) and
    what every phase shows (observedGeneration, the base model); a record of another run is started afresh."""
    new = copy.deepcopy(status)
    new["observedGeneration"] = seen.generation
    new["model"] = render.model_summary(spec)
    revision = ((status.get("plan") or {}).get("cache") or {}).get("revision")
    if revision:  # the commit the shared cache holds the run's model at
        new["model"] += f"@{revision[:12]}"
    run = dict(new.get("run") or {})
    if run.get("id") != rid:
        run = {}
    run.update(id=rid, jobName=names.job_name(seen.name, rid),
               outputPath=names.output_path(spec, seen.namespace, seen.name, rid))
    if warm_start is not None:
        run["warmStart"] = str(warm_start)
    run.setdefault("attempts", 0)
    new["run"] = run
    return new


def live_progress(new: dict[str, Any], reading: Reading | None, ip: str, conditions: list[dict[str, Any]],
                  generation: int | None, stamp: str, out: Decision) -> list[dict[str, Any]]:
    """A running trainer's progress from the latest read of its endpoint, and whether it answers."""
    if reading is None or reading.ip != ip:
        return conditions
    data = reading.data
    if data and data.get("step") is not None:
        new["progress"] = progress_status(data, reading.stamp or stamp)
    if data and isinstance(data.get("checkpoints"), list):
        new["checkpoints"] = checkpoint_status(data["checkpoints"], new["run"].get("outputPath"))
    if reading.failures >= UNREACHABLE_AFTER:
        since = f"since {reading.stamp}, the progress shown" if data and reading.stamp else "yet"
        message = (f"the trainer's progress endpoint ({ip}) has not answered {since} ({reading.error}); training "
                   f"goes on and the operator reads it less often. A NetworkPolicy that drops the operator's "
                   f"traffic to the pod's progress port looks like this")
        before = next((c for c in conditions if c.get("type") == "ProgressReported"), None)
        if before is None or before.get("status") != "False":
            out.events.append(("Warning", "ProgressUnavailable", message))
        return lifecycle.set_condition(conditions, "ProgressReported", "False", "ProgressUnavailable", message,
                                       generation, stamp)
    if data is not None and reading.failures == 0:
        return lifecycle.set_condition(conditions, "ProgressReported", "True", "ProgressReported",
                                       "the trainer's progress endpoint answers", generation, stamp)
    return conditions


def progress_status(data: dict[str, Any], stamp: str) -> dict[str, Any]:
    out = {k: data[k] for k in PROGRESS_KEYS if data.get(k) is not None}
    out["updateTime"] = stamp
    return out


def _seconds(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def usage(run: dict[str, Any], pods: list[dict[str, Any]], spec: api.SFTJobSpec, now: str) -> None:
    """GPU-seconds of the run: each attempt's running time (its trainer container's start to its end, or to now)
    times the GPUs it holds, summed over attempts. Kept per pod in status.run.podSeconds, since a preempted or
    retried pod is deleted and its time would be lost."""
    seconds = dict(run.get("podSeconds") or {})
    for pod in pods:
        state = next((s.get("state") or {} for s in (pod.get("status") or {}).get("containerStatuses") or []
                      if s.get("name") == "trainer"), {})
        start, end = None, None
        if state.get("running"):
            start, end = _seconds(state["running"].get("startedAt")), _seconds(now)
        elif state.get("terminated"):
            start, end = _seconds(state["terminated"].get("startedAt")), _seconds(state["terminated"].get("finishedAt"))
        if start is None or end is None:
            continue
        name = pod["metadata"]["name"]
        seconds[name] = round(max(0.0, end - start), 1)  # a finished attempt's own times replace the estimate
    if not seconds:
        return
    if len(seconds) > MAX_POD_RECORDS:
        names = list(seconds)
        folded = sum(seconds.pop(n) for n in names[: len(names) - MAX_POD_RECORDS + 1])
        seconds["earlier"] = round(folded, 1)
    run["podSeconds"] = seconds
    run["gpuSeconds"] = round(sum(seconds.values()) * spec.resources.gpus, 1)


def pods_status(run: dict[str, Any], pods: list[dict[str, Any]]) -> None:
    """status.run.pods: the newest pod of each index (one per node), where it runs and its phase."""
    current = lifecycle.current_pods(pods)
    if not current:
        return
    run["pods"] = [{k: v for k, v in (("index", index), ("name", pod["metadata"]["name"]),
                                      ("node", (pod.get("spec") or {}).get("nodeName")),
                                      ("phase", (pod.get("status") or {}).get("phase"))) if v is not None}
                   for index, pod in current.items()]


def result(message: dict[str, Any] | None, run: dict[str, Any], name: str) -> dict[str, Any]:
    message = message or {}
    output_path = run.get("outputPath")
    out: dict[str, Any] = {}
    if output_path and message.get("adapterPath"):
        out["adapterPath"] = f"{output_path}/{message['adapterPath']}"
    if output_path and message.get("mergedPath"):
        out["mergedPath"] = f"{output_path}/{message['mergedPath']}"
    for key in ("trainLoss", "evalLoss", "steps", "runtimeSeconds", "trainableParameters", "totalParameters",
                "trainedTokens", "evaluation", "resultStep", "stopReason", "warmStart"):
        if message.get(key) is not None:
            out[key] = message[key]
    if run.get("gpuSeconds") is not None:
        out["gpuSeconds"] = run["gpuSeconds"]
    serve = message.get("serving")
    if output_path and message.get("adapterPath") and isinstance(serve, dict) and serve.get("loraRank"):
        out["serving"] = serving_status(name, names.ClaimPath.parse(f"{output_path}/{message['adapterPath']}"), serve)
    return out


def checkpoint_status(checkpoints: list[Any], output_path: str | None) -> list[dict[str, Any]]:
    """The trainer's checkpoint inventory as status shows it: paths as <claim>:<folder>, within the status' bound."""
    out = []
    for c in checkpoints:
        if not isinstance(c, dict) or not isinstance(c.get("step"), int) or not c.get("path"):
            continue
        entry = {k: c[k] for k in ("step", "epoch", "trainLoss", "evalLoss", "complete", "best")
                 if c.get(k) is not None}
        entry.setdefault("complete", False)
        entry["path"] = f"{output_path}/{c['path']}" if output_path else c["path"]
        out.append(entry)
    if len(out) > MAX_CHECKPOINTS:
        best = [c for c in out if c.get("best")]
        out = (best + [c for c in out[-MAX_CHECKPOINTS:] if not c.get("best")])[-MAX_CHECKPOINTS:]
        out.sort(key=lambda c: c["step"])
    return out


def serving_status(name: str, adapter: names.ClaimPath, serve: dict[str, Any]) -> dict[str, Any]:
    """status.result.serving: what vLLM and KServe need to load the adapter from its claim."""
    path = f"{ADAPTER_MOUNT}/{adapter.folder}"
    lora_module = {"name": name, "path": path, "base_model_name": serve.get("baseModel")}
    out = {"claimName": adapter.claim, "path": adapter.folder, "baseModel": serve.get("baseModel"),
           "loraRank": serve["loraRank"],
           "targetModules": serve["targetModules"] if isinstance(serve.get("targetModules"), list) else [],
           "vllmLoraModules": json.dumps({k: v for k, v in lora_module.items() if v}, separators=(",", ":")),
           "storageUri": f"pvc://{adapter.claim}/{adapter.folder}"}
    for key in ("baseModelRevision", "vllmMaxLoraRank"):
        if serve.get(key) is not None:
            out[key] = serve[key]
    return out


def final_report(new: dict[str, Any], observation: lifecycle.Observation, run: dict[str, Any], name: str,
                 stamp: str) -> None:
    """A finished run's result and checkpoints, from its trainer's termination message; a succeeded run's progress
    at its end; a failed run's GPU-seconds."""
    if observation.phase in lifecycle.TERMINAL and observation.result:
        if observation.result.get("checkpoints") is not None:
            new["checkpoints"] = checkpoint_status(observation.result["checkpoints"], run.get("outputPath"))
        if observation.phase == "Failed" and observation.result.get("steps") is not None:
            new["result"] = result(observation.result, run, name)
    if observation.phase == "Succeeded":
        new["result"] = result(observation.result, run, name)
        progress = dict(new.get("progress") or {})
        progress.update(percent=100, eta="0s", updateTime=stamp)
        if progress.get("totalSteps") is not None or new["result"].get("steps") is not None:
            progress["step"] = progress["totalSteps"] = new["result"].get("steps") or progress.get("totalSteps")
        if new["result"].get("trainLoss") is not None and "loss" not in progress:
            progress["loss"] = new["result"]["trainLoss"]
        new["progress"] = progress
    elif observation.phase == "Failed" and run.get("gpuSeconds") is not None:
        new.setdefault("result", {})["gpuSeconds"] = run["gpuSeconds"]
