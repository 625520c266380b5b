"""The CRD generated from the API models: in sync with crds/, structural, valid, documented."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sftop import api
from sftop.cli import main
from sftop.crd import crd, crd_yaml, open_api_schema
from sftop.validate import model_problems, schema_problems

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "crds" / "sftjobs.sftop.dev.yaml"

# Fields of apiextensions.k8s.io/v1 JSONSchemaProps that a structural schema may use.
JSON_SCHEMA_PROPS = {
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "multipleOf",
    "minProperties", "maxProperties", "items", "properties", "required", "additionalProperties", "nullable",
    "title", "example", "externalDocs", "anyOf", "allOf", "oneOf", "not",
    "x-kubernetes-validations", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
}


def structural_violations(node, path="openAPIV3Schema"):
    """The rules of https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema
    that a generated schema can break."""
    out = []
    unknown = set(node) - JSON_SCHEMA_PROPS
    if unknown:
        out.append(f"{path}: keywords Kubernetes does not know: {sorted(unknown)}")
    if "$ref" in node or "$defs" in node or "definitions" in node:
        out.append(f"{path}: $ref/$defs are not allowed")
    if "const" in node:
        out.append(f"{path}: const is not allowed; use enum")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if not node.get("type") and not int_or_string and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.append(f"{path}: no type")
    if int_or_string and "type" in node:
        out.append(f"{path}: x-kubernetes-int-or-string must not have a type")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: additionalProperties beside properties")
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields") and path != "openAPIV3Schema.properties.metadata":
        out.append(f"{path}: an object with neither properties, additionalProperties nor preserve-unknown-fields")
    if node.get("type") == "array" and not isinstance(node.get("items"), dict):
        out.append(f"{path}: an array needs items")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(node.get(key, [])):
            if set(sub) & {"type", "description", "default", "nullable", "additionalProperties"}:
                out.append(f"{path}.{key}[{i}]: value validations may not set types, defaults or descriptions")
    if "enum" in node:
        want = {"string": str, "integer": int, "number": (int, float), "boolean": bool}.get(node.get("type"))
        if want and not all(isinstance(v, want) for v in node["enum"]):
            out.append(f"{path}: enum values do not match type {node['type']}")
    for key, sub in node.get("properties", {}).items():
        out += structural_violations(sub, f"{path}.properties.{key}")
    if isinstance(node.get("items"), dict):
        out += structural_violations(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        out += structural_violations(node["additionalProperties"], f"{path}.additionalProperties")
    return out


def walk(node, path=""):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}".lstrip("."))
    if isinstance(node.get("items"), dict) and "properties" in node["items"]:
        yield from walk(node["items"], f"{path}[]")


def test_checked_in_crd_is_what_sftop_crd_prints(capsys):
    assert main(["crd"]) == 0
    printed = capsys.readouterr().out
    assert printed == crd_yaml()
    assert CHECKED_IN.read_text() == printed, "crds/ is stale: run `sftop crd > crds/sftjobs.sftop.dev.yaml`"


def test_schema_is_structural():
    assert structural_violations(open_api_schema()) == []


def test_the_structural_check_catches_what_it_names():
    bad = {"type": "object", "properties": {
        "a": {"$ref": "#/x"}, "b": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "c": {"type": "object", "properties": {"d": {"type": "string"}}, "additionalProperties": False},
        "e": {"type": "string", "const": "x"}}}
    found = "\n".join(structural_violations(bad))
    for what in ("properties.a: $ref", "properties.b: no type", "properties.c: additionalProperties",
                 "properties.e: const"):
        assert what in found


def test_crd_validates_as_a_customresourcedefinition():
    kubernetes_validate.validate(crd(), "1.32.0", strict=True)


def test_crd_names_and_columns():
    doc = yaml.safe_load(CHECKED_IN.read_text())
    names = doc["spec"]["names"]
    assert (doc["metadata"]["name"], names["kind"], names["plural"], names["shortNames"]) == \
        ("sftjobs.sftop.dev", "SFTJob", "sftjobs", ["sft"])
    assert "sftop" in names["categories"]
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns[:5] == ["Phase", "Model", "Method", "Progress", "Loss"] and "Age" in columns


def test_every_spec_and_status_field_has_a_description():
    schema = open_api_schema()
    for root in ("spec", "status"):
        missing = [p for p, node in walk(schema["properties"][root], root) if not node.get("description")]
        assert missing == [], f"fields without a description (kubectl explain shows nothing): {missing}"


def test_crd_defaults_are_the_models_defaults():
    """The API server fills in the CRD's defaults, the operator the models': both must agree."""
    spec = api.SFTJobSpec.model_validate({"model": {"hub": {"id": "m/m"}}, "dataset": {"inline": [{"text": "x"}]},
                                          "output": {"pvc": {"claimName": "o"}}}).dump()
    schema = open_api_schema()["properties"]["spec"]
    nodes = dict(walk(schema, ""))
    for path, node in nodes.items():
        if "default" not in node or node["default"] == {}:
            continue
        parent, _, key = path.rpartition(".")
        if key in ((nodes.get(parent) or {}).get("default") or {}):
            continue  # the parent's default holds this key: it applies when the parent is left out (compared there)
        value = spec
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            assert value == node["default"], f"spec.{path}: CRD default {node['default']!r}, model default {value!r}"


@pytest.mark.parametrize("spec_patch,words", [
    ({"method": "lora", "quantization": {}}, "quantization applies only to method qlora"),
    ({"method": "full", "lora": {}}, "only to methods lora and qlora"),
    ({"dataset": {"inline": [{"text": "x"}], "hub": {"name": "a/b"}}}, "exactly one of hub, pvc"),
    ({"model": {"hub": {"id": "a/b"}, "pvc": {"claimName": "m", "path": "m"}}}, "exactly one of hub, pvc"),
    ({"training": {"epochs": 1, "maxSteps": 5}}, "either epochs or maxSteps"),
    ({"training": {"warmupSteps": 1, "warmupRatio": 0.1}}, "either warmupSteps or warmupRatio"),
    ({"dataset": {"inline": [{"text": "x"}], "evalSplit": {"fraction": 0.1, "name": "t"}}}, "exactly one of fraction"),
    ({"training": {"resultCheckpoint": "best"}}, "evaluation data, so set"),
    ({"training": {"earlyStopping": {"patience": 2}}}, "evaluation data, so set"),
    ({"dataset": {"inline": [{"text": "x"}], "evalSplit": {"fraction": 0.1}},
      "training": {"resultCheckpoint": "best", "saveSteps": 50, "evalSteps": 20}}, "multiple of evalSteps"),
    ({"warmStart": {"sftJob": "a", "pvc": {"claimName": "c", "path": "p"}}}, "exactly one of sftJob, pvc"),
    ({"warmStart": {}}, "exactly one of sftJob, pvc"),
    ({"warmStart": {"pvc": {"claimName": "c", "path": "p"}, "checkpoint": 10}}, "they need sftJob"),
    ({"method": "full", "warmStart": {"sftJob": "a"}}, "warmStart continues a LoRA adapter"),
])
def test_cross_field_rules_hold_in_the_crd_and_in_the_models(spec_patch, words):
    doc = {"apiVersion": "sftop.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "x"},
           "spec": {"model": {"hub": {"id": "m/m"}}, "dataset": {"inline": [{"text": "x"}]},
                    "output": {"pvc": {"claimName": "o"}}, **spec_patch}}
    assert any(words in p.message for p in schema_problems(doc)), "the CRD's CEL rules let it through"
    assert any(words in p.message for p in model_problems(doc)), "the pydantic models let it through"


def test_api_reference_in_docs_is_generated_from_the_models():
    from sftop.crd import reference_markdown

    assert (ROOT / "docs" / "api.md").read_text() == reference_markdown(), \
        "docs/api.md is stale: run `sftop crd --markdown > docs/api.md`"
    assert (ROOT / "docs" / "policy-api.md").read_text() == reference_markdown(policy=True), \
        "docs/policy-api.md is stale: run `sftop crd --policy --markdown > docs/policy-api.md`"


def test_the_settings_docs_are_the_codes_and_the_chart_sets_every_one():
    """docs/operator.md's settings table is operator/sftop/settings.py's; every setting has a row; the chart's
    Deployment sets every setting but the tests' own SFTOP_K8S_SERVER."""
    import dataclasses
    import re

    from sftop import settings

    table = [line for line in settings.__doc__.splitlines() if line.startswith("|")]
    assert "\n".join(table) in (ROOT / "docs" / "operator.md").read_text()
    documented = {row.split("|")[1].strip() for row in table[2:]}
    fields = {f"SFTOP_{f.name.upper()}" for f in dataclasses.fields(settings.Settings)}
    assert documented == fields
    deployment = (ROOT / "helm" / "sftop" / "templates" / "manager" / "deployment.yaml").read_text()
    assert set(re.findall(r"name: (SFTOP_[A-Z_]+)", deployment)) == fields - {"SFTOP_K8S_SERVER"}
