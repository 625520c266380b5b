"""ValidatingAdmissionPolicy, as the API server's admission plugin evaluates it (Kubernetes 1.30,
staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/{generic,validating,matching}; admissionregistration/v1
types.go). Used by harness.apiserver for every create and update of a resource that is not a subresource:

- Matching (matching.go, webhook/predicates/rules): the policy's matchConstraints.resourceRules by group, version,
  resource and operation; `resources: [x]` does not match `x/status` (rules.go: a subresource must be named). A
  binding's matchResources narrows it (absent: everything the policy matches).
- matchConditions (all must be true, else the policy is skipped), evaluated with object, oldObject, request and
  params; oldObject is null on CREATE.
- Parameters (policy_dispatcher.go CollectParams): paramRef.name is one GET of the paramKind (cluster-scoped here,
  so paramRef.namespace must be unset); a selector lists them, and each found param is evaluated, all must pass.
  Nothing found: parameterNotFoundAction Allow skips the binding; Deny is a configuration error, which under
  failurePolicy Fail denies with "failed to configure binding: no params found for policy binding with `Deny`
  parameterNotFoundAction" (422) and under Ignore admits.
- variables in order, each seeing the earlier ones (composition.go; lazily in the server, which this matches for
  any expression that does not fail); an error inside one fails every expression that uses it.
- validations: every one is evaluated, the first denied one answers (dispatcher.go deniedDecisions[0]): its
  messageExpression when it gives a non-empty string without a newline of at most 5 KiB
  (MaxEvaluatedMessageExpressionSizeBytes), else its message, else "failed expression:
  <expression>"; reason defaults to Invalid; a runtime error is "expression '<expression>' resulted in error:
  <error>" (Invalid) under failurePolicy Fail, admitted under Ignore.
- The client reads (apimachinery errors.NewForbidden, as the dispatcher keeps it): `<resource>.<group> "<name>" is
  forbidden: ValidatingAdmissionPolicy '<policy>' with binding '<binding>' denied request: <message>`, with HTTP
  403 for reason Forbidden and 422 for Invalid.
- CEL: the standard library with Kubernetes' string extensions `split` and `join` (ext.Strings), which the
  evaluator here lacks and are added with their documented meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import celpy
import celpy.celtypes as ct


MAX_MESSAGE_BYTES = 5 * 1024  # validating/validator.go: a longer messageExpression result is dropped


@dataclass
class Denial:
    status: int
    reason: str
    message: str


def _join(items: Any, sep: Any = "") -> Any:
    return ct.StringType(str(sep).join(str(i) for i in items))


def _split(text: Any, sep: Any) -> Any:
    return ct.ListType([ct.StringType(s) for s in str(text).split(str(sep))])


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _evaluate(expression: str, bound: dict[str, Any]) -> Any:
    if expression not in _PROGRAMS:
        _PROGRAMS[expression] = _ENV.program(_ENV.compile(expression), functions={"join": _join, "split": _split})
    result = _PROGRAMS[expression].evaluate(bound)
    if isinstance(result, celpy.CELEvalError):
        raise RuntimeError(str(result.args[0]) if result.args else str(result))
    return result


def _rule_matches(rules: list[dict[str, Any]], group: str, version: str, resource: str, operation: str) -> bool:
    def one(values: list[str], value: str) -> bool:
        return "*" in values or value in values

    return any(one(r.get("apiGroups") or [], group) and one(r.get("apiVersions") or [], version)
               and one(r.get("resources") or [], resource) and one(r.get("operations") or [], operation)
               for r in rules)


def admit(policies: list[dict[str, Any]], bindings: list[dict[str, Any]],
          params: Callable[[dict[str, Any], dict[str, Any]], list[dict[str, Any]] | None],
          request: dict[str, Any], obj: dict[str, Any] | None, old: dict[str, Any] | None) -> Denial | None:
    """The first denial of a create or update, or None. `request` holds group, version, resource, subResource,
    operation, name, namespace; `params(paramKind, paramRef)` lists the parameters a binding names (None: the
    reference is invalid)."""
    resource = request["resource"] + (f"/{request['subResource']}" if request.get("subResource") else "")
    by_name = {p["metadata"]["name"]: p for p in policies}
    for binding in bindings:
        policy = by_name.get((binding.get("spec") or {}).get("policyName"))
        if policy is None:
            continue
        spec, bspec = policy.get("spec") or {}, binding.get("spec") or {}
        rules = (spec.get("matchConstraints") or {}).get("resourceRules") or []
        if not _rule_matches(rules, request["group"], request["version"], resource, request["operation"]):
            continue
        narrowed = (bspec.get("matchResources") or {}).get("resourceRules")
        if narrowed and not _rule_matches(narrowed, request["group"], request["version"], resource,
                                          request["operation"]):
            continue
        denial = _one(policy, binding, params, request, obj, old)
        if denial is not None:
            return denial
    return None


def _one(policy: dict[str, Any], binding: dict[str, Any], params: Callable[..., Any], request: dict[str, Any],
         obj: dict[str, Any] | None, old: dict[str, Any] | None) -> Denial | None:
    spec, bspec = policy["spec"], binding["spec"]
    pname, bname = policy["metadata"]["name"], binding["metadata"]["name"]
    fail = spec.get("failurePolicy", "Fail") == "Fail"
    where = f'{request["resource"]}.{request["group"]} "{request["name"]}" is forbidden: ' \
            f"ValidatingAdmissionPolicy '{pname}' with binding '{bname}' denied request: "
    found: list[dict[str, Any] | None] = [None]
    if spec.get("paramKind") and bspec.get("paramRef"):
        found = params(spec["paramKind"], bspec["paramRef"])
        if not found:
            if bspec["paramRef"].get("parameterNotFoundAction", "Allow") == "Allow":
                return None
            return Denial(422, "Invalid", where + "failed to configure binding: no params found for policy binding "
                                                  "with `Deny` parameterNotFoundAction") if fail else None
    for param in found:
        bound = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                 "request": celpy.json_to_cel({"operation": request["operation"], "namespace": request["namespace"],
                                               "name": request["name"]}),
                 "params": celpy.json_to_cel(param)}
        try:
            if not all(bool(_evaluate(c["expression"], bound)) for c in spec.get("matchConditions") or []):
                continue
        except Exception as e:  # noqa: BLE001 - a matchCondition error is the failure policy's
            if fail:
                return Denial(422, "Invalid", where + f"failed to evaluate matchConditions: {e}")
            continue
        variables: dict[str, Any] = {}
        broken: dict[str, str] = {}
        for var in spec.get("variables") or []:
            try:
                variables[var["name"]] = _evaluate(var["expression"], {**bound, "variables": ct.MapType(
                    {ct.StringType(k): v for k, v in variables.items()})})
            except Exception as e:  # noqa: BLE001
                broken[var["name"]] = f'composited variable "{var["name"]}" fails to evaluate: {e}'
        bound["variables"] = ct.MapType({ct.StringType(k): v for k, v in variables.items()})
        for validation in spec.get("validations") or []:
            expression = validation["expression"]
            uses = [m for n, m in broken.items() if re.search(rf"\bvariables\.{re.escape(n)}\b", expression)]
            try:
                if uses:
                    raise RuntimeError(uses[0])
                ok = bool(_evaluate(expression, bound))
            except Exception as e:  # noqa: BLE001
                if fail:
                    return Denial(422, "Invalid", where + f"expression '{expression}' resulted in error: {e}")
                continue
            if ok:
                continue
            message = None
            if validation.get("messageExpression"):
                try:
                    text = _evaluate(validation["messageExpression"], bound)
                    if isinstance(text, str) and text.strip() and "\n" not in text and \
                            len(text.strip().encode()) <= MAX_MESSAGE_BYTES:
                        message = text.strip()
                except Exception:  # noqa: BLE001 - the server falls back to message
                    pass
            message = message or (validation.get("message") or "").strip() or f"failed expression: {expression}"
            reason = validation.get("reason") or "Invalid"
            return Denial({"Forbidden": 403, "Unauthorized": 401, "RequestEntityTooLarge": 413}.get(reason, 422),
                          reason, where + message)
    return None
