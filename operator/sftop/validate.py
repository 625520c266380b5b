"""Offline validation of SFTJob manifests: what `kubectl apply` and the operator would say, before applying.

Three checks, in the order the cluster makes them:
1. the CRD's openAPIV3Schema (jsonschema), with the API server's strict field validation (unknown fields
   are errors) and its defaulting applied first;
2. the CRD's CEL rules (`x-kubernetes-validations`), evaluated with cel-python;
3. the pydantic models the operator parses every SFTJob with (cross-field rules the schema cannot state).
Each problem is one line that starts with the field's path.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import ValidationError

from sftop import api, manifest
from sftop.crd import open_api_schema


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    keyword: str = ""  # the schema keyword that failed, when the schema found it

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema, with unknown fields forbidden as kubectl's strict
    field validation does."""
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k not in ("properties",)}
    if "properties" in node:
        out["properties"] = {k: _json_schema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(bound) is True:
            out[bound] = out.pop(flag)
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill in `default`s the way the API server does before it validates (nested objects included)."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


@functools.lru_cache(maxsize=1)
def _validator():
    import celpy
    import jsonschema

    env = celpy.Environment()
    programs: dict[str, Any] = {}

    def failures(rules: list[dict[str, Any]], instance: Any) -> tuple[str, ...]:
        """The messages of the rules that fail on one node."""
        bound = {"self": celpy.json_to_cel(instance)}  # once for all the rules of this node
        failed = []
        for rule in rules:
            if rule["rule"] not in programs:
                programs[rule["rule"]] = env.program(env.compile(rule["rule"]))
            try:
                ok = programs[rule["rule"]].evaluate(bound)
            except Exception as e:  # a rule that cannot evaluate is a failed rule, as in the API server
                ok = False
                rule = {**rule, "message": f"{rule.get('message', rule['rule'])} ({e})"}
            if not bool(ok):
                failed.append(rule.get("message") or f"failed rule: {rule['rule']}")
        return tuple(failed)

    @functools.lru_cache(maxsize=4096)
    def remembered(rules: str, instance: str) -> tuple[str, ...]:
        """Rules are pure functions of their node, so a node seen before (the same spec in many SFTJobs, a
        manifest validated again) is answered from here: the interpreter costs milliseconds a rule."""
        return failures(json.loads(rules), json.loads(instance))

    def cel(validator, rules, instance, schema):
        try:
            found = remembered(json.dumps(rules, sort_keys=True), json.dumps(instance, sort_keys=True))
        except TypeError:  # a value JSON does not have (a YAML date): evaluated as it is
            found = failures(rules, instance)
        for message in found:
            yield jsonschema.ValidationError(message)

    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-kubernetes-validations": cel})
    schema = open_api_schema()
    return schema, cls(_json_schema(schema))


def _path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _schema_at(schema: dict[str, Any], parts) -> dict[str, Any]:
    for p in parts:
        schema = schema.get("items", {}) if isinstance(p, int) else schema.get("properties", {}).get(p, {})
    return schema


_JSON_TYPES = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
               "object": "a mapping", "array": "a list", "null": "null"}


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return {dict: "a mapping", list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _message(err) -> str:
    """A schema error in words that name the rule and the value, not jsonschema's."""
    rule, value, got = err.validator, err.validator_value, err.instance
    if rule == "type":
        wanted = " or ".join(_JSON_TYPES.get(t, t) for t in ([value] if isinstance(value, str) else value))
        return f"must be {wanted}, not {_kind_of(got)}"
    bounds = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "greater than",
              "exclusiveMaximum": "less than"}
    if rule in bounds:
        return f"must be {bounds[rule]} {value} (got {got})"
    if rule in ("minLength", "minItems"):
        unit = "character" if rule == "minLength" else "item"
        return "must not be empty" if value == 1 else f"must have at least {_plural(value, unit)} (has {len(got)})"
    if rule in ("maxLength", "maxItems"):
        unit = "character" if rule == "maxLength" else "item"
        return f"must have at most {_plural(value, unit)} (has {len(got)})"
    if rule == "enum":
        return f"must be one of {', '.join(map(str, value))} (got {got!r})"
    return err.message


# Where one of these fails on a field, other rules failing there say nothing more (an empty string also fails its
# pattern; a string where a number belongs would fail the number's bounds).
_DECISIVE = ("type", "minLength", "minItems", "enum")


def schema_problems(doc: dict[str, Any]) -> list[Problem]:
    schema, validator = _validator()
    doc = apply_defaults(schema, copy.deepcopy(doc))
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator == "additionalProperties":
            known = sorted(_schema_at(schema, err.absolute_path).get("properties", {}))
            for key in sorted(set(err.instance) - set(known)):
                hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                problems.append(Problem(_path([*err.absolute_path, key]),
                                        f"unknown field; did you mean {hint[0]}?" if hint
                                        else f"unknown field (known: {', '.join(known)})"))
        elif err.validator == "required":
            problems += [Problem(_path([*err.absolute_path, key]), "required field is missing")
                         for key in err.validator_value if key not in err.instance]
        elif err.validator in ("anyOf", "oneOf") and err.context:
            problems.append(Problem(_path(err.absolute_path), err.context[-1].message))
        else:
            problems.append(Problem(_path(err.absolute_path), _message(err), str(err.validator)))
    return _one_per_field(problems)


def _one_per_field(problems: list[Problem]) -> list[Problem]:
    decided = {p.path for p in problems if p.keyword in _DECISIVE}
    return [p for p in problems if p.keyword in _DECISIVE or p.path not in decided]


def model_problems(doc: dict[str, Any]) -> list[Problem]:
    try:
        api.SFTJob.model_validate(doc)
    except ValidationError as err:
        return [Problem(*line.split(": ", 1)) if ": " in line else Problem("", line)
                for line in api.error_lines(err)]
    return []


def validate_document(doc: Any) -> list[Problem]:
    if not isinstance(doc, dict):
        return [Problem("", f"a manifest is a mapping, not {type(doc).__name__}")]
    from_schema, from_models = schema_problems(doc), model_problems(doc)
    friendly = {p.path: p for p in from_models}
    # A regular expression is no explanation: where the models say the same in words, take their words.
    problems = [friendly[p.path] if p.keyword == "pattern" and p.path in friendly
                and "should match pattern" not in friendly[p.path].message else p for p in from_schema]
    seen = {p.path for p in problems}
    # The models speak of the same fields; keep only what the schema did not already say.
    problems += [p for p in from_models if p.path not in seen
                 and not any(p.path.startswith(s + ".") or p.path.startswith(s + "[") for s in seen if s)]
    return problems


def is_sftjob(doc: Any) -> bool:
    return isinstance(doc, dict) and (doc.get("kind") == api.KIND
                                      or str(doc.get("apiVersion", "")).startswith(api.GROUP + "/"))


def documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(label, document) for every SFTJob in a YAML or JSON file; other kinds are skipped."""
    for i, doc in enumerate(manifest.read(path)):
        if isinstance(doc, dict) and not is_sftjob(doc):
            continue
        name = doc.get("metadata", {}).get("name", "?") if isinstance(doc, dict) else "?"
        yield f"{path}[{i}] {api.KIND}/{name}", doc


def validate_files(paths: list[Path]) -> tuple[int, list[str]]:
    """Returns (number of SFTJobs checked, one line per problem)."""
    lines, count = [], 0
    for path in paths:
        try:
            docs = list(documents(path))
        except (OSError, yaml.YAMLError) as e:
            lines.append(f"{path}: cannot read: {e}")
            continue
        for label, doc in docs:
            count += 1
            lines += [f"{label}: {p}" for p in validate_document(doc)]
    return count, lines
