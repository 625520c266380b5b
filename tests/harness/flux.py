"""Flux's custom health checks (`spec.healthCheckExprs` of a Kustomization), evaluated the way fluxcd/pkg
runtime/cel (status_evaluator.go `Evaluate`) does, with cel-python in place of cel-go:

1. status.observedGeneration present and != metadata.generation  -> InProgress (before any expression)
2. the expressions in the order inProgress, failed, current, each with the object's top-level fields (apiVersion,
   kind, metadata, spec, status) as variables; the first that is true decides
3. none true                                                      -> InProgress

An expression that cannot be evaluated (a field that does not exist yet) is an error: Flux reports it and polls
again until its timeout.
"""

from __future__ import annotations

from typing import Any

import celpy


class EvaluationError(Exception):
    pass


def evaluate(check: dict[str, str], obj: dict[str, Any]) -> str:
    """InProgress, Failed or Current for `obj` under one healthCheckExprs entry."""
    status, meta = obj.get("status") or {}, obj.get("metadata") or {}
    if isinstance(status.get("observedGeneration"), int) and isinstance(meta.get("generation"), int) \
            and status["observedGeneration"] != meta["generation"]:
        return "InProgress"
    env = celpy.Environment()
    activation = {k: celpy.json_to_cel(v) for k, v in obj.items()}
    for key, verdict in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if not check.get(key):
            continue
        try:
            result = env.program(env.compile(check[key])).evaluate(activation)
        except celpy.CELEvalError as e:
            raise EvaluationError(f"{key}: {check[key]}: {e.args[0] if e.args else e}") from None
        if isinstance(result, celpy.CELEvalError):
            raise EvaluationError(f"{key}: {check[key]}: {result}")
        if result is True or result == celpy.celtypes.BoolType(True):
            return verdict
    return "InProgress"
