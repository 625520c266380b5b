"""The promotion gate (spec.promotion): which run's adapter the SFTJob's stable path holds, and the switch. Pure.

    <output.path>/<namespace>/<sftjob>/promoted -> <run id>/adapter

A run that succeeded is judged once its result is in status: its scores at the result step against
`minimum`/`maximum`, its serving parity (the adapter folder loaded alone answers as the trainer did), and, with
`notWorseThan: promoted`, every metric both runs measured against the promoted run's, within `tolerance`, on the
same held-out data (the evaluation's fingerprint). A run that passes is switched in by a promotion Job; a run that
fails leaves the promoted adapter as it was, and the SFTJob is not Ready (Stalled, with the metric, its value and
the bar), so a GitOps pipeline stops there. `pin` promotes an earlier successful run without its gate.

Who switches: a small Job (the trainer image, `sftop-train --promote`), not the operator (which never mounts a
claim) and not the training pod (a pin promotes a run whose pod is long gone, and the gate needs the promoted
run's scores, which only status holds). The Job's name hashes the target, the run it replaces and the SFTJob's
generation, so each switch is one Job, created once, and a later switch back is a new one.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any

from sftop import api, lifecycle, names, report
from sftop.records import Action, Decision, Observed

LINK = "promoted"
BLOCKED = ("ServingMismatch", "MetricMissing", "BelowThreshold", "NotComparable", "Regressed", "PinNotFound",
           "PromotionFailed")


def stable_path(spec: api.SFTJobSpec, namespace: str, name: str) -> names.ClaimPath:
    """The SFTJob's stable path: the link serving reads."""
    folder = posixpath.join(*(p for p in (spec.output.path, namespace, name) if p))
    return names.ClaimPath(spec.output.pvc.claim_name, posixpath.join(folder, LINK))


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """A result's scores at its result step, by the gate's metric names."""
    after = ((result.get("evaluation") or {}).get("after") or {})
    out = {k: float(after[k]) for k in api.GATE_METRICS if isinstance(after.get(k), (int, float))}
    if "evalLoss" not in out and isinstance(result.get("evalLoss"), (int, float)):
        out["evalLoss"] = float(result["evalLoss"])
    return out


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def gate(p: api.PromotionSpec, rid: str, result: dict[str, Any], promoted: dict[str, Any] | None
         ) -> tuple[bool, str, str, list[dict[str, Any]]]:
    """(passed, reason, message, checks) for run `rid` and its result, against the promoted run."""
    metrics = metrics_of(result)
    evaluation = result.get("evaluation") or {}
    checks: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []  # (reason, what failed)
    parity = evaluation.get("parity")
    if not isinstance(parity, dict):
        checks.append({"metric": "parity", "passed": True,
                       "detail": "not measured (methods qlora and full, or no held-out answers)"})
    else:
        equal = not parity.get("differing") and not parity.get("error")
        checks.append({"metric": "parity", "value": parity.get("differing"), "bar": 0, "passed": equal})
        if not equal:
            first = parity.get("firstDifference") or {}
            shown = {k: first.get(k, "")[:80] for k in ("prompt", "trainer", "served")}
            what = parity.get("error") or (f"{parity.get('differing')} of {parity.get('prompts')} answers of the "
                                           f"adapter folder, loaded as a server loads it, differ from the trainer's "
                                           f"(first: {shown['prompt']!r}: trainer {shown['trainer']!r}, served "
                                           f"{shown['served']!r})")
            failures.append(("ServingMismatch", what))
    for bound, bars in (("minimum", p.minimum), ("maximum", p.maximum)):
        for metric, bar in bars.items():
            value = metrics.get(metric)
            if value is None:
                checks.append({"metric": metric, "bar": bar, "passed": False, "against": bound})
                failures.append(("MetricMissing", f"{metric} was not measured (spec.promotion.{bound} needs it; "
                                                  f"exactMatch and validJson need evaluation.answers and an eval "
                                                  f"split)"))
                continue
            ok = value >= bar if bound == "minimum" else value <= bar
            checks.append({"metric": metric, "value": value, "bar": bar, "passed": ok, "against": bound})
            if not ok:
                failures.append(("BelowThreshold", f"{metric} {_fmt(value)} {'<' if bound == 'minimum' else '>'} "
                                                   f"{_fmt(bar)} (spec.promotion.{bound})"))
    if p.not_worse_than == "promoted" and promoted and promoted.get("runId") != rid and not promoted.get("fingerprint"):
        checks.append({"metric": "fingerprint", "passed": True, "against": promoted["runId"],
                       "detail": "the promoted run has no evaluation fingerprint: not compared"})
    elif p.not_worse_than == "promoted" and promoted and promoted.get("runId") != rid:
        theirs, ours = promoted.get("fingerprint"), evaluation.get("fingerprint")
        comparable = theirs == ours
        checks.append({"metric": "fingerprint", "passed": comparable, "against": promoted["runId"],
                       "detail": f"{(ours or 'none')[:12]} vs {(theirs or 'none')[:12]}"})
        named = set(p.minimum) | set(p.maximum) | set(p.tolerance)  # compared: what the gate names, else all
        if not comparable:
            failures.append(("NotComparable", f"run {rid} was evaluated on other held-out data than the promoted run "
                                              f"{promoted['runId']} (evaluation fingerprint {(ours or 'none')[:12]} vs "
                                              f"{(theirs or 'none')[:12]}): keep dataset.evalSplit.file and "
                                              f"evaluation.prompts the same, or pin a run"))
        else:
            for metric, before in sorted((promoted.get("metrics") or {}).items()):
                value = metrics.get(metric)
                if value is None or metric not in api.GATE_METRICS or (named and metric not in named):
                    continue
                slack = p.tolerance.get(metric, 0.0)
                higher = metric in api.HIGHER_IS_BETTER
                bar = before - slack if higher else before + slack
                ok = value >= bar if higher else value <= bar
                checks.append({"metric": metric, "value": value, "bar": round(bar, 6), "passed": ok,
                               "against": promoted["runId"]})
                if not ok:
                    failures.append(("Regressed", f"{metric} {_fmt(value)} is worse than the promoted run "
                                                  f"{promoted['runId']}'s {_fmt(before)}"
                                                  + (f" beyond the tolerance {_fmt(slack)}" if slack else "")))
    if failures:
        reason = next(r for r in BLOCKED if any(f[0] == r for f in failures))
        return False, reason, f"run {rid} is not promoted: " + "; ".join(f[1] for f in failures), checks
    return True, "Promoted", f"run {rid} passed its promotion gate", checks


def job_name(name: str, target: str, promoted: dict[str, Any] | None) -> str:
    """`<sftjob>-p<7 hex>`: one Job per switch, named by the target and the promotion it replaces (its run and
    time): an edit of the spec during a switch is the same switch, a later switch back a new one. As long as the
    training Job's name, never equal to one."""
    replaced = f"{promoted.get('runId')}@{promoted.get('time')}" if promoted else ""
    digest = hashlib.sha256(f"{target}/{replaced}".encode()).hexdigest()
    return f"{name}-p{digest[:7]}"


def target(spec: api.SFTJobSpec, status: dict[str, Any], namespace: str, name: str
           ) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """(the run to promote now: {id, outputPath, result, pinned}, or None; (reason, message) when nothing can be)."""
    p = spec.promotion
    assert p is not None
    run = status.get("run") or {}
    if not p.pin:
        if status.get("phase") == "Succeeded" and run.get("id"):
            return {"id": run["id"], "outputPath": run.get("outputPath"), "result": status.get("result") or {},
                    "pinned": False}, None
        return None, None
    want = None
    if run.get("id") == p.pin and status.get("phase") == "Succeeded":
        want = {"id": p.pin, "outputPath": run.get("outputPath"), "result": status.get("result") or {},
                "pinned": True}
    earlier = next((r for r in status.get("previousRuns") or [] if r.get("id") == p.pin), None)
    if want is None and earlier is not None and earlier.get("phase") == "Succeeded":
        kept = earlier.get("result") or {}
        result = {"adapterPath": kept.get("adapterPath"), "serving": kept.get("serving"),
                  "evaluation": {"after": kept.get("metrics") or {}, "fingerprint": kept.get("fingerprint")}}
        want = {"id": p.pin, "outputPath": earlier.get("outputPath"), "result": result, "pinned": True}
    if want is None:
        known = [r["id"] for r in [run, *(status.get("previousRuns") or [])]
                 if r.get("id") and (r is run and status.get("phase") == "Succeeded" or r.get("phase") == "Succeeded")]
        return None, ("PinNotFound", f"spec.promotion.pin {p.pin} is not a successful run of this SFTJob; its "
                                     f"successful runs: {', '.join(known) or 'none yet'}")
    where = _elsewhere(spec, namespace, name, want["outputPath"])
    if where is not None:
        return None, ("PinNotFound", f"spec.promotion.pin {p.pin} cannot be linked from the stable path: {where}")
    return want, None


def _elsewhere(spec: api.SFTJobSpec, namespace: str, name: str, output_path: str | None) -> str | None:
    """Why a run's folder cannot be linked from the stable path (another claim, or another folder), if it cannot:
    the link is relative, within one claim."""
    if not output_path:
        return "its folder is not known"
    here = names.ClaimPath.parse(names.output_path(spec, namespace, name, "x"))
    there = names.ClaimPath.parse(output_path)
    if there.claim != here.claim or posixpath.dirname(there.folder) != posixpath.dirname(here.folder):
        return f"it is at {output_path}, not beside the stable path {stable_path(spec, namespace, name)}"
    return None


def wanted_job(spec: api.SFTJobSpec | None, status: dict[str, Any], namespace: str, name: str) -> str | None:
    """The name of the promotion Job the status calls for now, if any: what sftop.observe looks up."""
    if spec is None or spec.promotion is None:
        return None
    want, _ = target(spec, status, namespace, name)
    promoted = status.get("promoted")
    if want is None or want["id"] == (promoted or {}).get("runId"):
        return None
    return job_name(name, want["id"], promoted)


def promotion_step(seen: Observed, new: dict[str, Any], out: Decision) -> None:
    """Bring status.promoted, status.promotion and the Promoted condition in line with the gate, and the stable path
    with status.promoted (through a promotion Job). The promoted run's serving config names the stable path: it
    never changes with the next promotion (a run not promoted keeps its own folder's)."""
    _step(seen, new, out)
    spec = seen.spec
    assert spec is not None
    promoted, serving = new.get("promoted"), (new.get("result") or {}).get("serving")
    if spec.promotion is not None and promoted and promoted.get("runId") == (new.get("run") or {}).get("id") \
            and serving and serving.get("loraRank"):
        new["result"]["serving"] = report.serving_status(seen.name, stable_path(spec, seen.namespace, seen.name),
                                                         serving)


def _step(seen: Observed, new: dict[str, Any], out: Decision) -> None:
    spec = seen.spec
    assert spec is not None
    generation, stamp = seen.generation, seen.now
    conditions = new.get("conditions") or []
    if spec.promotion is None:
        new.pop("promotion", None)
        new["conditions"] = [c for c in conditions if c.get("type") != "Promoted"]
        return
    promoted = new.get("promoted")
    want, problem = target(spec, new, seen.namespace, seen.name)

    def condition(status: str, reason: str, message: str, event: str | None = None) -> None:
        before = next((c for c in conditions if c.get("type") == "Promoted"), None)
        new["conditions"] = lifecycle.set_condition(conditions, "Promoted", status, reason, message, generation,
                                                    stamp)
        if event and (before is None or (before.get("reason"), before.get("message")) != (reason, message)):
            out.events.append((event, reason, message))

    if problem is not None:
        new["promotion"] = {"passed": False, "reason": problem[0], "checks": []}
        condition("False", *problem, event="Warning")
        return
    if want is None:
        if promoted is None:
            condition("Unknown", "NotYet", "no run has finished since spec.promotion was set")
        return
    if promoted is not None and promoted.get("runId") == want["id"]:
        # already there: a threshold tightened since does not take it back (the next run is judged by it)
        reason = "Pinned" if want["pinned"] else "Promoted"
        if (new.get("promotion") or {}).get("runId") != want["id"]:
            new["promotion"] = {"runId": want["id"], "passed": True, "reason": reason, "checks": []}
        condition("True", reason, f"run {want['id']} is promoted at {promoted['path']}")
        return
    if want["pinned"]:
        passed, reason, message, checks = True, "Pinned", f"run {want['id']} is pinned by spec.promotion.pin", []
    else:
        passed, reason, message, checks = gate(spec.promotion, want["id"], want["result"], promoted)
    new["promotion"] = {"runId": want["id"], "passed": passed, "reason": reason, "checks": checks}
    if not passed:
        condition("False", reason, message + (f"; the promoted adapter is still run {promoted['runId']}'s"
                                               if promoted else "; nothing is promoted"), event="Warning")
        return
    jname = job_name(seen.name, want["id"], promoted)
    job = seen.promotion_job if seen.promotion_job is not None and \
        seen.promotion_job["metadata"]["name"] == jname else None
    busy = [j for j in seen.promotion_jobs if j != jname]
    if job is None and busy:
        # one switch at a time: an earlier one (for a spec since changed) finishes first, so the link and
        # status.promoted never disagree about which ran last
        condition("Unknown", "Promoting", f"waiting for the switch in Job {busy[0]} to finish before switching "
                                          f"to run {want['id']}")
        out.requeue = 5.0
        return
    if job is None:
        out.actions.append(Action("ensure_job", seen.namespace, jname,
                                  promotion_job(seen, spec, want, jname)))
        condition("Unknown", "Promoting", f"switching {stable_path(spec, seen.namespace, seen.name)} to run "
                                          f"{want['id']} (Job {jname})")
        return
    observation = lifecycle.observe(False, False, job, seen.promotion_pods)
    if observation.phase == "Succeeded":
        stable = stable_path(spec, seen.namespace, seen.name)
        adapter = want["result"].get("adapterPath") or f"{want['outputPath']}/adapter"
        record = {"runId": want["id"], "path": str(stable), "adapterPath": adapter,
                  "metrics": metrics_of(want["result"]),
                  "fingerprint": (want["result"].get("evaluation") or {}).get("fingerprint"),
                  "time": stamp, "replaced": (promoted or {}).get("runId"), "pinned": want["pinned"] or None}
        serving = (want["result"].get("serving") or {})
        if serving.get("loraRank"):
            record["serving"] = report.serving_status(seen.name, stable, {
                "baseModel": serving.get("baseModel"), "baseModelRevision": serving.get("baseModelRevision"),
                "loraRank": serving["loraRank"], "targetModules": serving.get("targetModules"),
                "vllmMaxLoraRank": serving.get("vllmMaxLoraRank")})
        new["promoted"] = {k: v for k, v in record.items() if v is not None}
        message = f"run {want['id']} is promoted at {stable}" + (
            f", replacing run {promoted['runId']}" if promoted else "")
        condition("True", reason, message, event="Normal")
    elif observation.phase == "Failed":
        condition("False", "PromotionFailed", f"the switch to run {want['id']} failed: {observation.message}",
                  event="Warning")
        new["promotion"].update(passed=False, reason="PromotionFailed")
    else:
        condition("Unknown", "Promoting", f"switching {stable_path(spec, seen.namespace, seen.name)} to run "
                                          f"{want['id']} (Job {jname}: {observation.phase})")
        out.requeue = 5.0


def promotion_job(seen: Observed, spec: api.SFTJobSpec, want: dict[str, Any], jname: str) -> dict[str, Any]:
    from sftop import render
    from sftop.children import adopt

    folder = posixpath.dirname(stable_path(spec, seen.namespace, seen.name).folder)
    adapter = want["result"].get("adapterPath") or ""
    kind = "model" if adapter.endswith("/model") or (not adapter and spec.method == "full") else "adapter"
    job = render.promotion_job(seen.name, seen.namespace, spec, want["id"], jname, folder, kind, seen.settings)
    adopt(job, seen.body, template=True)
    return job


