"""Render the SFTJob CustomResourceDefinition from the pydantic models in `sftop.api`.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no null unions, `enum` instead of
`const`, `x-kubernetes-int-or-string` for int-or-string, and no
`additionalProperties` beside `properties`. pydantic writes JSON Schema 2020-12; this module converts it.

Optional fields (`X | None`) become plain `X`, not `nullable: true`: the API server then prunes an explicit
`null` (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#defaulting-and-nullable),
so `field: null` in a manifest means the same as leaving it out, as it does to the pydantic models.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from sftop import api, policy

# Keywords a structural schema keeps (value validations and Kubernetes extensions), in the order written.
_KEEP = (
    "type", "description", "default", "enum", "format", "pattern", "minimum", "exclusiveMinimum", "maximum",
    "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "items",
    "additionalProperties", "required", "properties", "x-kubernetes-validations",
)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _inline_refs({**target, **rest}, defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if "anyOf" in node:
        options = node.pop("anyOf")
        non_null = [o for o in options if o.get("type") != "null"]
        types = {o.get("type") for o in non_null}
        if types == {"integer", "string"}:
            node.pop("type", None)
            node["x-kubernetes-int-or-string"] = True
        elif len(non_null) == 1:
            node = {**non_null[0], **node}
        else:
            raise ValueError(f"cannot express {options} in a structural schema")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "x-kubernetes-int-or-string" in node:
        node.pop("type", None)
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[flag] = node.pop(bound)
            node[bound] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "properties" in node:
        node["type"] = "object"
        node.pop("additionalProperties", None)
        props = {}
        for key, sub in node["properties"].items():
            sub = _structural(sub)
            # Object defaults of nested models are written as {} so the API server fills in the
            # nested fields' own defaults instead of a frozen copy of them, unless the field's default differs
            # from what those give (a rule whose action the field sets): then the default is written whole.
            if sub.get("type") == "object" and "properties" in sub and isinstance(sub.get("default"), dict):
                filled = {k: v["default"] for k, v in sub["properties"].items() if "default" in v}
                if all(filled.get(k) == v for k, v in sub["default"].items() if v is not None):
                    sub["default"] = {}
            if sub.get("default") is None:
                sub.pop("default", None)
            props[key] = sub
        node["properties"] = props
        if not node.get("required"):
            node.pop("required", None)
    elif node.get("type") == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            node["additionalProperties"] = _structural(extra)
        else:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
    if isinstance(node.get("items"), dict):
        node["items"] = _structural(node["items"])
    return {k: node[k] for k in _KEEP if k in node}


def spec_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(_inline_refs(raw, raw.get("$defs", {})))


def open_api_schema() -> dict[str, Any]:
    spec = spec_schema(api.SFTJobSpec)
    spec["description"] = api.SFTJobSpec.__doc__.strip()
    status = spec_schema(api.SFTJobStatus)
    status["description"] = api.SFTJobStatus.__doc__.strip()
    # The API server applies this default when it reads an SFTJob the operator has not yet written a status for:
    # generation 1 against observedGeneration 0 reads as "not yet reconciled" to kstatus (Flux, kubectl-based
    # tooling), to Flux's CEL health checks and to the Argo CD health script, instead of as a finished object
    # with no conditions.
    status["default"] = {"observedGeneration": 0}
    return {
        "type": "object",
        "description": "SFTJob fine-tunes a large language model with TRL's SFTTrainer (LoRA, QLoRA or full) "
                       "and writes the adapter to a PersistentVolumeClaim.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "sftop.dev/v1alpha1"},
            "kind": {"type": "string", "description": "SFTJob"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [{
            "rule": f"self.metadata.name.size() <= {api.MAX_NAME_LENGTH}",
            "message": f"metadata.name must be at most {api.MAX_NAME_LENGTH} characters (the run's Job name "
                       f"adds {api.RUN_ID_LENGTH + 1})",
        }, {
            "rule": "!has(self.spec.distribution) || !has(self.spec.distribution.nodes) || "
                    "self.spec.distribution.nodes == 1 || "
                    f"self.metadata.name.size() <= {api.MAX_MULTI_NODE_NAME_LENGTH}",
            "message": f"metadata.name must be at most {api.MAX_MULTI_NODE_NAME_LENGTH} characters with "
                       f"spec.distribution.nodes > 1 (each pod's hostname is <name>-<run id>-<index>, at most 63)",
        }],
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the SFTJob."},
    {"name": "Model", "type": "string", "jsonPath": ".status.model", "description": "Base model."},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method", "description": "lora, qlora or full."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent",
     "description": "Percent of the run's steps done."},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "description": "Latest training loss."},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "description": "Estimated time left."},
    {"name": "Profile", "type": "string", "jsonPath": ".spec.resources.profile",
     "description": "GPU profile (the cluster's SFTPolicy)."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Run", "type": "string", "jsonPath": ".status.run.id", "priority": 1, "description": "Current run id."},
    {"name": "Job", "type": "string", "jsonPath": ".status.run.jobName", "priority": 1,
     "description": "The run's Job."},
    {"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.status==\"True\")].reason",
     "priority": 1, "description": "Reasons of the conditions that hold."},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "sftop", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": open_api_schema()},
            }],
        },
    }


def policy_crd() -> dict[str, Any]:
    """The SFTPolicy CustomResourceDefinition: cluster-scoped, owned by the platform team (sftop.policy)."""
    spec = spec_schema(policy.PolicySpec)
    spec["description"] = policy.PolicySpec.__doc__.strip()
    names = spec["properties"]["profiles"]
    names["x-kubernetes-validations"] = [{
        "rule": f"self.all(k, k.matches(r'{api.DNS1123_LABEL}') && k.size() <= 63)",
        "message": "profile names are lowercase letters, digits and '-', at most 63 characters"}]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{policy.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "sftop", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Cluster",
            "names": {"kind": policy.KIND, "listKind": f"{policy.KIND}List", "plural": policy.PLURAL,
                      "singular": policy.SINGULAR, "categories": ["sftop"]},
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "additionalPrinterColumns": [
                    {"name": "Profiles", "type": "string", "jsonPath": ".spec.profiles",
                     "description": "The GPU profiles users may pick."},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "SFTPolicy: what SFTJobs may ask of the operator in this cluster (images, remote "
                                   "code, sources, GPUs, priorities, placement, queues, deadlines) and the GPU "
                                   "profiles users pick by name. docs/security.md.",
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"}, "spec": spec},
                }},
            }],
        },
    }


HEADER = "# Generated by `sftop crd` from operator/sftop/api.py. Do not edit; run `sftop crd > crds/sftjobs.sftop.dev.yaml`.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)


POLICY_HEADER = ("# Generated by `sftop crd --policy` from operator/sftop/policy.py. Do not edit; run `sftop crd --policy > "
                 "crds/sftpolicies.sftop.dev.yaml`.\n")


def policy_crd_yaml() -> str:
    return POLICY_HEADER + yaml.safe_dump(policy_crd(), sort_keys=False, width=120, allow_unicode=True)


def admission_yaml() -> str:
    """The ValidatingAdmissionPolicy (helm/sftop/files/admission-policy.yaml; the chart adds the binding)."""
    return ("# Generated by `sftop crd --admission` from operator/sftop/policy.py. Do not edit.\n"
            + yaml.safe_dump(policy.admission_policy(), sort_keys=False, width=120, allow_unicode=True))


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if node.get("type") == "array":
        return f"list of {_type_of(node.get('items', {}))}"
    if node.get("type") == "object" and "properties" not in node:
        return "map"
    return node.get("type", "any")


def reference_markdown(policy: bool = False) -> str:
    """docs/api.md: every field of spec and status, from the same schema the CRD carries (docs/policy-api.md: the
    SFTPolicy's)."""
    if policy:
        schema = policy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        out = ["# SFTPolicy API reference (sftop.dev/v1alpha1)", "",
               "Generated by `sftop crd --policy --markdown` from operator/sftop/policy.py; `kubectl explain "
               "sftpolicy.spec.<field>` shows the same text. docs/security.md says what each rule guards.", ""]
    else:
        schema = open_api_schema()
        out = ["# SFTJob API reference (sftop.dev/v1alpha1)", "",
               "Generated by `sftop crd --markdown` from operator/sftop/api.py; `kubectl explain "
               "sftjob.spec.<field>` shows the same text.", ""]

    def table(title: str, node: dict[str, Any], path: str) -> None:
        out.extend([f"## `{path}`", "", node.get("description", ""), "",
                    "| field | type | default | description |", "|---|---|---|---|"])
        nested = []
        required = set(node.get("required", []))
        for key, sub in node.get("properties", {}).items():
            default = json.dumps(sub["default"]) if "default" in sub else ("required" if key in required else "")
            desc = sub.get("description", "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{key}` | {_type_of(sub)} | {default} | {desc} |")
            child = sub.get("items", {}) if sub.get("type") == "array" else sub
            if "properties" in child:
                nested.append((key, child, f"{path}.{key}" + ("[]" if sub.get("type") == "array" else "")))
        rules = node.get("x-kubernetes-validations", [])
        if rules:
            out.extend(["", "Rules: " + "; ".join(r["message"] for r in rules) + "."])
        out.append("")
        for key, child, child_path in nested:
            table(key, child, child_path)

    table("spec", schema["properties"]["spec"], "spec")
    if not policy:
        table("status", schema["properties"]["status"], "status")
    return "\n".join(out)
