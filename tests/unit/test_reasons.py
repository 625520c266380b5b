"""The reasons table (`sftop reasons`, docs/reasons.md) lists every reason the code writes, and nothing else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from sftop import cli, lifecycle, reasons
from sftop_trainer.errors import EXIT_CLASSES

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "operator" / "sftop"
WORD = re.compile(r"^[A-Z][A-Za-z0-9]+$")
# Where a reason stands in a call: Observation(phase, reason, ...), QueueState(reason, ...), condition(status,
# reason, ...), set_condition(conditions, type, status, reason, ...), cannot_start(seen, status, rid, out, reason, ...),
# phase_conditions(conditions, phase, reason, ...).
REASON_ARG = {"Observation": 1, "QueueState": 0, "condition": 1, "set_condition": 3, "cannot_start": 4,
              "phase_conditions": 2}
# The words that share those places and are not reasons: phases, condition types and statuses, Event types, kinds,
# access modes, taint effects and toleration operators.
NOT_REASONS = {"Pending", "Queued", "Running", "Failed", "Accepted", "Ready", "Reconciling", "Stalled",
               "ProgressReported", "QuotaReserved", "SuccessCriteriaMet", "Complete", "True", "False", "Unknown",
               "Normal", "Warning", "ConfigMap", "PersistentVolumeClaim", "ReadWriteOnce", "ReadWriteMany",
               "ReadWriteOncePod", "NoSchedule", "PreferNoSchedule", "NoExecute", "Equal", "Exists", "EmptyDir",
               # an Event's reason only (kubectl describe), never a condition's
               "NewRun",
               # the ValidatingAdmissionPolicy's denial reason (the API server's 403), never in status
               "Forbidden",
               # Kueue's reasons on a Workload, which the operator reads (kueue.WAITING) and words as its own
               "WaitingForPreemptedWorkloads", "PendingEvaluation", "Deactivated"}
# Reasons Kubernetes writes that the operator passes on: kubelet's waiting reasons, the scheduler's, the Job
# controller's, and the references the operator names by kind (f"{short}NotFound").
PASSED_ON = {*lifecycle.STUCK_WAITING, "ContainerCreating", "PodInitializing", "Unschedulable", "BackoffLimitExceeded", "DeadlineExceeded", "PodFailed",
             "SecretNotFound", "ConfigMapNotFound", "ConfigMapKeyNotFound", "PVCNotFound"}


def written() -> dict[str, str]:
    """Every capitalised word the operator's code puts where a reason goes, with where."""
    found: dict[str, str] = {}
    for path in sorted(SOURCE.glob("*.py")):
        if path.name == "reasons.py":
            continue

        def add(node: ast.AST, path: Path = path) -> None:
            if isinstance(node, ast.BoolOp):
                for value in node.values:
                    add(value)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and WORD.match(node.value):
                found.setdefault(node.value, f"{path.name}:{node.lineno}")

        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.Set)):
                for element in node.elts:
                    add(element)
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name in REASON_ARG and len(node.args) > REASON_ARG[name]:
                    add(node.args[REASON_ARG[name]])
                for keyword in node.keywords:
                    if keyword.arg == "reason":
                        add(keyword.value)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "reason":
                        add(value)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    label = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                    if "reason" in label.lower():
                        add(node.value)
    return {word: where for word, where in found.items() if word not in NOT_REASONS}


def test_every_reason_the_operator_writes_is_in_the_table():
    missing = {word: where for word, where in written().items() if word not in reasons.REASONS}
    assert not missing, f"reasons the code writes that `sftop reasons` does not explain: {missing}"


def test_the_table_lists_no_reason_nothing_writes():
    known = set(written()) | PASSED_ON | {c.reason for c in EXIT_CLASSES.values()}
    stale = sorted(set(reasons.REASONS) - known)
    assert not stale, f"reasons in the table that nothing writes: {stale}"


def test_every_trainer_failure_class_is_in_the_table_with_its_outcome():
    for cls in EXIT_CLASSES.values():
        row = reasons.REASONS[cls.reason]
        assert row.outcome == (reasons.RETRIED if cls.retryable else reasons.FINAL), cls.reason
        assert cls.meaning in row.what


def test_docs_reasons_is_the_generated_table():
    assert (ROOT / "docs" / "reasons.md").read_text() == reasons.markdown(), \
        "docs/reasons.md is stale: sftop reasons --markdown > docs/reasons.md"


def test_sftop_reasons_explains_one_reason_and_refuses_an_unknown_one(capsys):
    assert cli.main(["reasons", "waitingforquota"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("WaitingForQuota (Queued; waits") and "ClusterQueue" in said
    assert cli.main(["reasons", "CUDAOutOfMemory", "NoSuchReason"]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("CUDAOutOfMemory (Failed; the run fails)")
    assert "NoSuchReason" in out.err and "sftop reasons" in out.err


@pytest.mark.parametrize("doc", ["troubleshooting.md", "operator.md", "queues.md", "results.md"])
def test_docs_name_only_reasons_that_exist(doc):
    """A reason the docs put in a reason's place (a table's first column, "reason X") is one the table knows."""
    text = (ROOT / "docs" / doc).read_text()
    named = set(re.findall(r"reason `?([A-Z][A-Za-z]+)`?", text))
    rows = re.findall(r"^\| (`[A-Z][^|]*)\|", text, re.MULTILINE)
    named |= {w for row in rows for w in re.findall(r"`([A-Z][A-Za-z]+)`", row)}
    unknown = sorted(named - set(reasons.REASONS) - NOT_REASONS)
    assert not unknown, f"docs/{doc} names reasons sftop never writes: {unknown}"
