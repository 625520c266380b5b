"""What a platform team allows through an SFTJob: the SFTPolicy (sftop.dev/v1alpha1, cluster-scoped), its rules,
its GPU profiles, and the ValidatingAdmissionPolicy that refuses a violating SFTJob at `kubectl apply`.

The operator is a deputy: it creates pods with its own rights for whoever may create an SFTJob. An SFTPolicy bounds
what an SFTJob may ask of it: trainer images, remote code, model and data sources, GPUs, priorities, placement,
queues and deadlines. One object holds the cluster's rules, per-namespace overrides (`namespaces.<ns>.<rule>`
replaces that rule in that namespace; unset rules fall back to the cluster's, then to the defaults below) and the
GPU profiles users pick by name (`resources.profile`).

The rules are written once, in CEL, below. The same expressions run in two places:
- the API server, as a ValidatingAdmissionPolicy whose parameter is the SFTPolicy (`admission_policy()`, rendered
  into the Helm chart): a violating SFTJob is refused at apply with the rule's name and what is allowed;
- the operator, before a run creates any child (`violations()`, with cel-python): defence in depth, and the
  enforcement on clusters where admission policies are off. A violating run fails with reason PolicyViolation.
What only the operator can do is here too: resolve a profile into placement and resources (`place`), apply the
default deadline, and hold a run while its namespace's GPUs in flight are at `maxGpusPerNamespace`.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from sftop import api, lifecycle
from sftop.names import GPUS_ANNOTATION
from sftop_trainer.config import Spec

KIND = "SFTPolicy"
PLURAL = "sftpolicies"
SINGULAR = "sftpolicy"
DEFAULT_NAME = "default"


class Profile(Spec):
    """A pool of GPU nodes, named once by the platform team: where its pods go and what each GPU brings."""

    description: str | None = Field(None, max_length=256, description="What the pool is, for users.")
    node_selector: dict[str, str] = Field({}, description="Node labels of the pool's nodes.")
    tolerations: list[api.Toleration] = Field([], max_length=64, description="Tolerations of the pool's taints.")
    gpu_memory: api.Quantity | None = Field(None, description="Memory of each GPU, for example `80Gi`: the plan "
                                                              "checks a run's fit against it.")
    gpu_resource_name: str | None = Field(None, max_length=253, description="Extended resource name of the pool's "
                                                                            "GPUs, for example `nvidia.com/gpu`.")
    queue_name: str | None = Field(None, max_length=63, description="Kueue LocalQueue of runs on this pool that "
                                                                    "name none.")
    cpu_per_gpu: api.Quantity | None = Field(None, description="CPU request and limit per GPU of runs that set "
                                                               "none, for example `8`.")
    memory_per_gpu: api.Quantity | None = Field(None, description="Memory request and limit per GPU of runs that "
                                                                  "set none, for example `120Gi`.")


# Each rule's default, when neither the namespace's override nor the cluster's policy sets it. `*` in a list allows
# anything; -1 is no limit.
DEFAULTS: dict[str, Any] = {
    "images": [], "trustRemoteCode": False, "hubOrganizations": ["*"], "claims": ["*"], "outputClaims": ["*"],
    "allowedProfiles": ["*"], "maxGpusPerJob": -1,
    "maxGpusPerNamespace": -1, "priorityClasses": ["*"], "workloadPriorityClasses": ["*"], "requireQueue": False,
    "nodeSelectorKeys": ["*"], "tolerationKeys": ["*"], "allowAffinity": True, "maxActiveDeadlineSeconds": -1,
    "defaultActiveDeadlineSeconds": -1, "cacheClaim": "",
}


ImagePrefix = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^(\*|.*[/:@])$")]
Name = Annotated[str, Field(min_length=1, max_length=253)]


class Rules(Spec):
    """What an SFTJob may ask for. Every rule is optional: unset, a namespace's rule is the cluster's, and the
    cluster's is its default."""

    images: list[ImagePrefix] | None = Field(None, max_length=256, description=(
        "Trainer images `spec.image` may name, as prefixes: end each with `/`, `:` or `@` (`ghcr.io/acme/` allows "
        "that registry path; `ghcr.io/acme/trainer:` that repository at any tag); `*` allows any. An SFTJob that "
        "names no image runs the operator's own. Default: none, only the operator's own image."))
    trust_remote_code: bool | None = Field(None, description=(
        "Whether `model.trustRemoteCode: true` is allowed (a model repository's own Python runs in the validation "
        "and training pods). Default: false."))
    hub_organizations: list[Name] | None = Field(None, max_length=256, description=(
        "Hub organisations (or users) whose models and datasets may be used, the part of the id before `/`; `*` "
        "allows any. Default: any."))
    claims: list[Name] | None = Field(None, max_length=256, description=(
        "PersistentVolumeClaims a model, dataset or warm-start adapter may be read from (`model.pvc`, `dataset.pvc`, "
        "`warmStart.pvc`); `*` allows any claim of the SFTJob's namespace. Default: any."))
    output_claims: list[Name] | None = Field(None, max_length=256, description=(
        "PersistentVolumeClaims runs may write to or create (`output.pvc.claimName`); `*` allows any. Default: "
        "any."))
    allowed_profiles: list[Name] | None = Field(None, max_length=256, description=(
        "GPU profiles runs may pick (`resources.profile`): set per namespace to give each team its own pools; `*` "
        "allows every profile. Default: every profile."))
    max_gpus_per_job: int | None = Field(None, ge=-1, description=(
        "Most GPUs one SFTJob may ask for (`resources.gpus` x `distribution.nodes`); -1: no limit. Default: no "
        "limit."))
    max_gpus_per_namespace: int | None = Field(None, ge=-1, description=(
        "Most GPUs a namespace's runs may hold at once, for clusters without Kueue: a run that would go over waits "
        "(reason WaitingForGpuQuota) until others finish. Enforced by the operator only; -1: no limit. Default: no "
        "limit."))
    priority_classes: list[Name] | None = Field(None, max_length=256, description=(
        "PriorityClasses `resources.priorityClassName` may name; `*` allows any. Default: any."))
    workload_priority_classes: list[Name] | None = Field(None, max_length=256, description=(
        "Kueue WorkloadPriorityClasses `workloadPriorityClassName` may name; `*` allows any. Default: any."))
    require_queue: bool | None = Field(None, description=(
        "Every run goes through Kueue: `queueName` (or its profile's queue) must be set. Default: false."))
    node_selector_keys: list[Name] | None = Field(None, max_length=256, description=(
        "Node label keys `resources.nodeSelector` may use; `*` allows any. A profile's own placement is always "
        "allowed. Default: any."))
    toleration_keys: list[Name] | None = Field(None, max_length=256, description=(
        "Taint keys `resources.tolerations` may tolerate; `*` allows any, including a toleration without a key "
        "(which tolerates every taint). Default: any."))
    allow_affinity: bool | None = Field(None, description=(
        "Whether `resources.affinity` may be set (an affinity can reach any node, past nodeSelectorKeys). Default: "
        "true."))
    max_active_deadline_seconds: int | None = Field(None, ge=-1, description=(
        "Longest `runPolicy.activeDeadlineSeconds` a run may set; a run that sets none gets "
        "defaultActiveDeadlineSeconds, else this. -1: no limit. Default: no limit."))
    default_active_deadline_seconds: int | None = Field(None, ge=-1, description=(
        "Deadline of runs that set none (applied by the operator); -1: none. Default: none."))


    cache_claim: str | None = Field(None, max_length=253, pattern=api.DNS1123_SUBDOMAIN + "|^$", description=(
        "A PersistentVolumeClaim, in each namespace that runs SFTJobs, holding the shared model cache (the Hugging "
        "Face cache layout, keyed by Hub id and commit): the Validating phase fills it on a CPU with what a run's "
        "Hub model lacks, and training pods read it, read-only and offline, so no GPU waits for a download. "
        "ReadWriteMany (validation pods write while training pods read); empty: no shared cache, training pods "
        "download into their own volume. Default: none."))


class PolicySpec(Rules):
    """The cluster's rules for SFTJobs, per-namespace overrides and GPU profiles."""

    model_config = ConfigDict(title="SFTPolicySpec")

    profiles: dict[str, Profile] = Field({}, description=(
        "GPU profiles by name (lowercase letters, digits and '-'): users write `resources: {profile: <name>, gpus: "
        "N}` instead of node labels, taints and GPU memory."))
    namespaces: dict[str, Rules] = Field({}, description=(
        "Overrides by namespace: a rule set here replaces the cluster's rule in that namespace, looser or "
        "stricter."))


# ------------------------------------------------------------------------------------------------ the rules in CEL


def _effective(rule: str) -> str:
    """The rule's value for the SFTJob's namespace: its override, else the cluster's, else the default."""
    ns = "params.spec.namespaces[request.namespace]"
    return (f"has(params.spec.namespaces) && request.namespace in params.spec.namespaces && has({ns}.{rule}) ? "
            f"{ns}.{rule} : has(params.spec.{rule}) ? params.spec.{rule} : {json.dumps(DEFAULTS[rule])}")


def _allowed(rule: str, value: str) -> str:
    return f"variables.{rule}.exists(a, a == '*' || a == {value})"


def _listed(rule: str) -> str:
    """The rule's list in words, for messages: a long one by its size (the API server drops a message over 5 KiB
    for the expression's text)."""
    return (f"(variables.{rule}.size() == 0 ? 'none' : variables.{rule}.size() > 20 ? "
            f"string(variables.{rule}.size()) + ' entries (kubectl get sftpolicy -o yaml)' : "
            f"variables.{rule}.join(', '))")


RES = "object.spec.resources"
GPUS = (f"(has({RES}) && has({RES}.gpus) ? {RES}.gpus : 1) * (has(object.spec.distribution) && "
        f"has(object.spec.distribution.nodes) ? object.spec.distribution.nodes : 1)")
PROFILE_QUEUE = (f"has({RES}) && has({RES}.profile) && has(params.spec.profiles) && {RES}.profile in "
                 f"params.spec.profiles && has(params.spec.profiles[{RES}.profile].queueName)")

# (name, expression, messageExpression): the ValidatingAdmissionPolicy's validations, in order. Each message
# starts with the rule's name and says what is allowed.
VALIDATIONS: list[tuple[str, str, str]] = [
    ("image",
     "!has(object.spec.image) || variables.images.exists(a, a == '*' || object.spec.image.startsWith(a))",
     "'policy rule image: spec.image ' + object.spec.image + ' is not allowed; allowed image prefixes: ' + "
     + _listed("images") + " + ' (an SFTJob without spec.image runs the operator trainer image)'"),
    ("trustRemoteCode",
     "variables.trustRemoteCode || !has(object.spec.model.trustRemoteCode) || !object.spec.model.trustRemoteCode",
     "\"policy rule trustRemoteCode: spec.model.trustRemoteCode is not allowed here (a model repository's own "
     "code would run in the pods); use a model that needs no remote code\""),
    ("hubOrganizations",
     "!has(object.spec.model.hub) || " + _allowed("hubOrganizations", "object.spec.model.hub.id.split('/')[0]"),
     "'policy rule hubOrganizations: spec.model.hub.id ' + object.spec.model.hub.id + ' is not from an allowed "
     "organisation; allowed: ' + " + _listed("hubOrganizations")),
    ("hubOrganizations",
     "!has(object.spec.dataset.hub) || " + _allowed("hubOrganizations", "object.spec.dataset.hub.name.split('/')[0]"),
     "'policy rule hubOrganizations: spec.dataset.hub.name ' + object.spec.dataset.hub.name + ' is not from an "
     "allowed organisation; allowed: ' + " + _listed("hubOrganizations")),
    ("claims",
     "!has(object.spec.model.pvc) || " + _allowed("claims", "object.spec.model.pvc.claimName"),
     "'policy rule claims: spec.model.pvc.claimName ' + object.spec.model.pvc.claimName + ' is not an allowed "
     "claim; allowed: ' + " + _listed("claims")),
    ("claims",
     "!has(object.spec.dataset.pvc) || " + _allowed("claims", "object.spec.dataset.pvc.claimName"),
     "'policy rule claims: spec.dataset.pvc.claimName ' + object.spec.dataset.pvc.claimName + ' is not an "
     "allowed claim; allowed: ' + " + _listed("claims")),
    ("claims",
     "!has(object.spec.warmStart) || !has(object.spec.warmStart.pvc) || "
     + _allowed("claims", "object.spec.warmStart.pvc.claimName"),
     "'policy rule claims: spec.warmStart.pvc.claimName ' + object.spec.warmStart.pvc.claimName + ' is not an "
     "allowed claim; allowed: ' + " + _listed("claims")),
    ("outputClaims",
     _allowed("outputClaims", "object.spec.output.pvc.claimName"),
     "'policy rule outputClaims: spec.output.pvc.claimName ' + object.spec.output.pvc.claimName + ' is not a "
     "claim runs may write to here; allowed: ' + " + _listed("outputClaims")),
    ("maxGpusPerJob",
     f"variables.maxGpusPerJob < 0 || {GPUS} <= variables.maxGpusPerJob",
     f"'policy rule maxGpusPerJob: the run asks for ' + string({GPUS}) + ' GPUs (resources.gpus x "
     f"distribution.nodes); at most ' + string(variables.maxGpusPerJob) + ' are allowed'"),
    ("priorityClasses",
     f"!has({RES}) || !has({RES}.priorityClassName) || " + _allowed("priorityClasses", f"{RES}.priorityClassName"),
     f"'policy rule priorityClasses: spec.resources.priorityClassName ' + {RES}.priorityClassName + ' is not "
     f"allowed; allowed: ' + " + _listed("priorityClasses")),
    ("workloadPriorityClasses",
     "!has(object.spec.workloadPriorityClassName) || "
     + _allowed("workloadPriorityClasses", "object.spec.workloadPriorityClassName"),
     "'policy rule workloadPriorityClasses: spec.workloadPriorityClassName ' + "
     "object.spec.workloadPriorityClassName + ' is not allowed; allowed: ' + " + _listed("workloadPriorityClasses")),
    ("requireQueue",
     f"!variables.requireQueue || has(object.spec.queueName) || ({PROFILE_QUEUE})",
     "'policy rule requireQueue: every run here goes through Kueue: set spec.queueName to a LocalQueue of this "
     "namespace (kubectl get localqueues)'"),
    ("nodeSelectorKeys",
     f"!has({RES}) || !has({RES}.nodeSelector) || {RES}.nodeSelector.all(k, "
     + _allowed("nodeSelectorKeys", "k") + ")",
     f"'policy rule nodeSelectorKeys: spec.resources.nodeSelector uses ' + {RES}.nodeSelector.filter(k, "
     f"!variables.nodeSelectorKeys.exists(a, a == '*' || a == k)).join(', ') + '; allowed keys: ' + "
     + _listed("nodeSelectorKeys") + " + ' (or pick a GPU profile: spec.resources.profile)'"),
    ("tolerationKeys",
     f"!has({RES}) || !has({RES}.tolerations) || {RES}.tolerations.all(t, "
     f"variables.tolerationKeys.exists(a, a == '*' || (has(t.key) && a == t.key)))",
     f"'policy rule tolerationKeys: spec.resources.tolerations may tolerate only the taint keys ' + "
     + _listed("tolerationKeys") + " + ' (a toleration without a key tolerates every taint)'"),
    ("allowAffinity",
     f"variables.allowAffinity || !has({RES}) || !has({RES}.affinity)",
     "'policy rule allowAffinity: spec.resources.affinity is not allowed here; use spec.resources.profile or "
     "nodeSelector'"),
    ("maxActiveDeadlineSeconds",
     "variables.maxActiveDeadlineSeconds < 0 || !has(object.spec.runPolicy) || "
     "!has(object.spec.runPolicy.activeDeadlineSeconds) || "
     "object.spec.runPolicy.activeDeadlineSeconds <= variables.maxActiveDeadlineSeconds",
     "'policy rule maxActiveDeadlineSeconds: spec.runPolicy.activeDeadlineSeconds ' + "
     "string(object.spec.runPolicy.activeDeadlineSeconds) + ' is over the limit of ' + "
     "string(variables.maxActiveDeadlineSeconds)"),
    ("profiles",
     f"!has({RES}) || !has({RES}.profile) || (has(params.spec.profiles) && {RES}.profile in params.spec.profiles)",
     f"'policy rule profiles: spec.resources.profile ' + {RES}.profile + ' is not a GPU profile of this cluster; "
     f"profiles: ' + (!has(params.spec.profiles) || params.spec.profiles.size() == 0 ? 'none' : "
     f"params.spec.profiles.size() > 20 ? string(params.spec.profiles.size()) + ' (kubectl get sftpolicy -o yaml)' "
     f": params.spec.profiles.map(p, p).join(', '))"),
    ("allowedProfiles",
     f"!has({RES}) || !has({RES}.profile) || " + _allowed("allowedProfiles", f"{RES}.profile"),
     f"'policy rule allowedProfiles: spec.resources.profile ' + {RES}.profile + ' is not for this namespace; "
     f"allowed: ' + " + _listed("allowedProfiles")),
]

# What the rules read: an update that changes none of these is not judged (dataset.inline is left out: it may be
# large, and it is no source the rules bound).
BOUNDED = ("image", "model", "dataset.hub", "dataset.pvc", "resources", "distribution", "queueName",
           "workloadPriorityClassName", "runPolicy", "warmStart", "output")


def _changed(path: str) -> str:
    parent, _, leaf = f"spec.{path}".rpartition(".")
    new, old = f"object.{parent}", f"oldObject.{parent}"
    return (f"(has({new}.{leaf}) != has({old}.{leaf}) || "
            f"(has({new}.{leaf}) && {new}.{leaf} != {old}.{leaf}))")


JUDGED = "request.operation == 'CREATE' || " + " || ".join(_changed(p) for p in BOUNDED)

RULE_NAMES = tuple(dict.fromkeys(name for name, _, _ in VALIDATIONS))
VARIABLES = [rule for rule in DEFAULTS if rule not in ("maxGpusPerNamespace", "defaultActiveDeadlineSeconds",
                                                      "cacheClaim")]


def admission_policy(name: str = "sftop") -> dict[str, Any]:
    """The ValidatingAdmissionPolicy over SFTJob creates and updates, its parameter the SFTPolicy."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "sftop",
                                              "app.kubernetes.io/component": "policy"}},
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": api.API_VERSION, "kind": KIND},
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [api.GROUP], "apiVersions": [api.VERSION], "operations": ["CREATE", "UPDATE"],
                "resources": [api.PLURAL]}]},
            # an update that changes nothing the rules read (suspend, promotion, labels) is not judged again: a
            # run the policy has since tightened against can still be suspended, pinned or relabelled
            "matchConditions": [{"name": "asks-for-something-the-policy-bounds", "expression": JUDGED}],
            "variables": [{"name": rule, "expression": _effective(rule)} for rule in VARIABLES],
            "validations": [{"expression": expr, "messageExpression": message, "reason": "Forbidden"}
                            for _, expr, message in VALIDATIONS],
        },
    }


def admission_binding(name: str = "sftop", policy: str = DEFAULT_NAME) -> dict[str, Any]:
    """Binds the policy to every SFTJob, with the SFTPolicy `policy` as its parameter. Without it SFTJobs are
    admitted (parameterNotFoundAction Allow) and the operator holds their runs (PolicyMissing): a Deny would refuse
    every SFTJob write in the cluster, label edits included, whenever the policy is briefly absent (an upgrade
    re-creating it, a paramKind the API server has not yet resolved)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "sftop",
                                              "app.kubernetes.io/component": "policy"}},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "paramRef": {"name": policy, "parameterNotFoundAction": "Allow"}},
    }


# ------------------------------------------------------------------------------------- the operator's enforcement


@functools.lru_cache(maxsize=1)
def _programs() -> tuple[Any, dict[str, Any], list[tuple[str, Any, Any]]]:
    import celpy
    import celpy.celtypes as ct

    def join(items: Any, sep: Any = "") -> Any:
        return ct.StringType(str(sep).join(str(i) for i in items))

    def split(text: Any, sep: Any) -> Any:
        return ct.ListType([ct.StringType(s) for s in str(text).split(str(sep))])

    env = celpy.Environment()
    functions = {"join": join, "split": split}

    def program(expr: str) -> Any:
        return env.program(env.compile(expr), functions=functions)

    variables = {rule: program(_effective(rule)) for rule in DEFAULTS}
    checks = [(rule, program(expr), program(message)) for rule, expr, message in VALIDATIONS]
    return celpy, variables, checks


def effective(policy: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Every rule's value for one namespace."""
    celpy, variables, _ = _programs()
    bound = {"params": celpy.json_to_cel(policy), "request": celpy.json_to_cel({"namespace": namespace})}
    return {rule: _plain(program.evaluate(bound)) for rule, program in variables.items()}


def violations(policy: dict[str, Any], sftjob: dict[str, Any], namespace: str) -> list[tuple[str, str]]:
    """(rule, message) of each rule the SFTJob breaks: the admission policy's own expressions and messages. A rule
    that cannot be evaluated is broken, as failurePolicy Fail makes it at admission."""
    celpy, _, checks = _programs()
    rules = effective(policy, namespace)
    bound = {"params": celpy.json_to_cel(policy), "request": celpy.json_to_cel({"namespace": namespace}),
             "object": celpy.json_to_cel(sftjob), "variables": celpy.json_to_cel(rules)}
    found = []
    for rule, check, message in checks:
        try:
            ok = bool(check.evaluate(bound))
        except Exception as e:  # noqa: BLE001 - celpy raises its own kinds
            found.append((rule, f"policy rule {rule}: could not be evaluated ({e})"))
            continue
        if not ok:
            try:
                found.append((rule, str(message.evaluate(bound))))
            except Exception:  # noqa: BLE001
                found.append((rule, f"policy rule {rule} refuses this SFTJob"))
    return found


def _plain(value: Any) -> Any:
    """A CEL value as JSON."""
    import celpy.celtypes as ct

    if isinstance(value, (bool, ct.BoolType)) or value is None:
        return bool(value) if value is not None else None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


_QUANTITY = re.compile(r"^\+?([0-9.]+)(.*)$")


def _times(quantity: str | int, n: int) -> str:
    """A quantity times a count: `8` x 2 is `16`, `120Gi` x 2 is `240Gi`, `7500m` x 2 is `15000m`."""
    number, suffix = _QUANTITY.match(str(quantity)).groups()
    value = float(number) * n
    return (str(int(value)) if value.is_integer() else f"{value:g}") + suffix


def place(spec: api.SFTJobSpec, policy: dict[str, Any] | None, namespace: str) -> api.SFTJobSpec:
    """The spec as the run's pods get it: its profile's placement, GPU memory, queue and per-GPU resources filled
    in where the SFTJob sets none (its own nodeSelector and tolerations are added to the profile's), and the
    policy's default deadline where it sets none."""
    if policy is None:
        return spec
    spec = spec.model_copy(deep=True)
    res = spec.resources
    profile = (policy.get("spec") or {}).get("profiles", {}).get(res.profile) if res.profile else None
    if profile is not None:
        prof = Profile.model_validate(profile)
        res.node_selector = {**prof.node_selector, **res.node_selector}
        res.tolerations = [t for t in prof.tolerations if t not in res.tolerations] + list(res.tolerations)
        if res.gpu_memory is None and prof.gpu_memory is not None:
            res.gpu_memory = prof.gpu_memory
            res._gpu_memory_from = f"GPU profile {res.profile}: {prof.gpu_memory}"
        if "gpu_resource_name" not in res.model_fields_set and prof.gpu_resource_name:
            res.gpu_resource_name = prof.gpu_resource_name
        gpus = max(res.gpus, 1)
        if res.cpu is None and prof.cpu_per_gpu is not None:
            res.cpu = _times(prof.cpu_per_gpu, gpus)
        if res.memory is None and prof.memory_per_gpu is not None:
            res.memory = _times(prof.memory_per_gpu, gpus)
        if spec.queue_name is None and prof.queue_name:
            spec.queue_name = prof.queue_name
    rules = effective(policy, namespace)
    if rules["cacheClaim"] and spec.model.hub is not None:
        spec.model._cache_claim = rules["cacheClaim"]
    if spec.run_policy.active_deadline_seconds is None:
        deadline = rules["defaultActiveDeadlineSeconds"]
        if deadline < 0:
            deadline = rules["maxActiveDeadlineSeconds"]
        if deadline > 0:
            spec.run_policy.active_deadline_seconds = deadline
    return spec


def judged_again(status: dict[str, Any], generation: int | None) -> bool:
    """A run the policy refused is judged again once its spec changes: the fix may be a field outside the run id
    (queueName, runPolicy, workloadPriorityClassName), so the run id alone would keep it refused."""
    return lifecycle.phase_reason(status) == "PolicyViolation" and status.get("observedGeneration") != generation


def gpus_of(job: dict[str, Any]) -> int:
    """GPUs a training Job's pods hold together, as the operator wrote them on it."""
    value = ((job.get("metadata") or {}).get("annotations") or {}).get(GPUS_ANNOTATION, "0")
    return int(value) if str(value).isdigit() else 0


def policy_object(spec: dict[str, Any], name: str = DEFAULT_NAME) -> dict[str, Any]:
    """An SFTPolicy manifest with this spec, validated."""
    return {"apiVersion": api.API_VERSION, "kind": KIND, "metadata": {"name": name},
            "spec": PolicySpec.model_validate(copy.deepcopy(spec)).dump()}
