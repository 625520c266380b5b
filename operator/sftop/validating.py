"""A run's Validating phase: its CPU-only validation Job, followed to its end, and whether the plan it wrote lets
the training Job be created (a mistake or a run that cannot fit fails the run before any GPU is asked for). Pure.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sftop import api, kueue, lifecycle, names
from sftop.children import children
from sftop.records import Decision, Observed
from sftop.report import base_status


def validation(seen: Observed, status: dict[str, Any], rid: str, warm_start: names.ClaimPath | None,
               out: Decision) -> tuple[dict[str, Any], bool]:
    """The Validating phase of a run: create its CPU-only Job, follow it, and say what it found. Returns (the status
    now, whether the run passed and its training Job may be created)."""
    assert seen.spec is not None
    spec, generation, stamp = seen.spec, seen.generation, seen.now
    vname = names.validation_job_name(seen.name, rid)
    job = seen.validation_job
    if job is None:
        job = children(seen, spec, rid, out, validation=True, warm_start=warm_start)
    observation = lifecycle.observe(False, bool(spec.validation.queue_name), job, seen.validation_pods)
    kueue.queue_view(seen.validation_queue, spec.validation.queue_name, observation, {}, None)
    new = base_status(status, spec, rid, seen, warm_start)
    new["run"]["validationJobName"] = vname
    conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "True", "Accepted",
                                         "the spec is valid and its references exist", generation, stamp)
    passed = False
    if observation.phase == "Succeeded":
        plan = (observation.result or {}).get("plan")
        problem = validation_problem(plan)
        if problem is None:
            assert plan is not None
            new["plan"] = plan
            reason, message = "Validated", (f"data, template and model checked: {plan['samples']} samples, "
                                            f"{plan['totalSteps']} steps, ~{plan['memory']['perGpu']} GiB per GPU")
            cache = plan.get("cache")
            if cache:  # the model is in the shared cache at this commit: what the GPUs will not wait for
                cache["claim"] = spec.model._cache_claim
                new["run"]["downloadSeconds"] = cache["downloadSeconds"]
                message += (f"; {cache['model']}@{cache['revision'][:12]} " +
                            ("was cached" if cache["cached"] else
                             f"cached: {cache['downloadedBytes'] / 2**30:.2f} GiB in {cache['downloadSeconds']:.0f} s"))
            conditions = lifecycle.set_condition(conditions, "Validated", "True", reason, message, generation, stamp)
            new["run"]["validated"] = passed = True
            new.update(phase="Pending", message="creating the training Job")
            event = ("Normal", reason, message)
            quality = data_quality(plan)
            conditions = lifecycle.set_condition(conditions, "DataQuality", *quality, generation, stamp)
            if quality[0] == "False" and new.get("phase") != status.get("phase"):
                out.events.append(("Warning", "DataQuality", quality[2]))
        else:
            if plan is not None:
                new["plan"] = plan
            reason, message = problem
            conditions = lifecycle.set_condition(conditions, "Validated", "False", reason, message, generation, stamp)
            conditions = lifecycle.phase_conditions(conditions, "Failed", reason, message, generation, stamp)
            new.update(phase="Failed", message=message)
            new["run"]["completionTime"] = observation.completion_time or stamp
            event = ("Warning", reason, message)
    elif observation.phase == "Failed":
        reason, message = observation.reason, observation.message
        conditions = lifecycle.set_condition(conditions, "Validated", "False", reason, message, generation, stamp)
        conditions = lifecycle.phase_conditions(conditions, "Failed", reason, message, generation, stamp)
        new.update(phase="Failed", message=message)
        new["run"]["completionTime"] = observation.completion_time or stamp
        event = ("Warning", reason, message)
    else:
        quiet = not observation.warning and observation.phase != "Queued"
        reason = "Validating" if quiet else observation.reason
        message = "checking the data, chat template and model on a CPU before asking for a GPU" if quiet else \
            observation.message
        conditions = lifecycle.set_condition(conditions, "Validated", "Unknown", reason, message, generation, stamp)
        new.update(phase="Validating", message=message)
        event = ("Warning" if observation.warning else "Normal", reason, message)
    new["conditions"] = conditions
    if (new.get("phase"), reason) != (status.get("phase"), validated_reason(status)):
        out.events.append(event)
    out.reason = reason
    return new, passed


def data_quality(plan: dict[str, Any]) -> tuple[str, str, str]:
    """The DataQuality condition of a run that passed validation: (status, reason, message). True when the checks
    found nothing to say; False, reason Warnings, with what they found (and what the policy dropped) otherwise.
    Failures never get here: they fail the validation with reason DataQuality."""
    data = plan.get("data") or {}
    said = [f for f in data.get("findings") or [] if f.get("action") in ("warn", "drop")]
    if not said:
        return "True", "Passed", "the data-quality checks found nothing to warn about (status.plan.data)"
    parts = [f"{f['check']} ({'dropped ' if f['action'] == 'drop' else ''}{f['count']} {f['file']} rows, "
             f"{f['share']:.1%})" for f in said]
    return "False", "Warnings", "the data-quality checks warn: " + "; ".join(parts) + " (status.plan.data has the " \
                                                                                    "rows; dataset.quality sets the " \
                                                                                    "policy)"


def validation_problem(plan: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) when a validation that finished does not let the run start."""
    if not plan:
        return "ValidationFailed", "the validation Job finished without writing a plan"
    try:
        checked = api.Plan.model_validate(plan)
    except ValidationError as e:
        return "ValidationFailed", "the validation Job wrote a plan this operator cannot read: " + "; ".join(
            api.error_lines(e, "plan."))
    mem = checked.memory
    if mem.fits is False:
        return "InsufficientGPUMemory", (
            f"the run needs about {mem.per_gpu} GiB per GPU ({checked.method}) but the GPU has {mem.gpu_memory} GiB "
            f"({mem.gpu_memory_source}); would fit: " + "; or ".join(mem.would_fit or ["nothing found"]))
    return None


def validated_reason(status: dict[str, Any]) -> str | None:
    for c in status.get("conditions") or []:
        if c.get("type") == "Validated":
            return c.get("reason")
    return None
