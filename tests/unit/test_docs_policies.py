"""The policies the docs tell platform teams to paste are ones the SFTPolicy accepts, and the admin guide's Kueue
objects are the kinds sftop's queues are built from."""

import re
from pathlib import Path

import pytest
import yaml

from sftop import policy

DOCS = Path(__file__).resolve().parents[2] / "docs"


def yaml_blocks(name):
    return [yaml.safe_load_all(b) for b in re.findall(r"```yaml\n(.*?)```", (DOCS / name).read_text(), re.S)]


@pytest.mark.parametrize("name", ["security.md", "admin.md"])
def test_every_policy_in_the_docs_is_a_valid_sftpolicy(name):
    specs = [doc["policy"]["spec"] for block in yaml_blocks(name) for doc in block
             if isinstance(doc, dict) and "policy" in doc]
    assert specs, f"{name} shows no policy"
    for spec in specs:
        policy.PolicySpec.model_validate(spec)


def test_the_admin_guides_kueue_objects_and_profile():
    docs = [doc for block in yaml_blocks("admin.md") for doc in block if isinstance(doc, dict)]
    kinds = {doc.get("kind") for doc in docs if doc.get("apiVersion", "").startswith("kueue.x-k8s.io/")}
    assert kinds == {"ResourceFlavor", "ClusterQueue", "WorkloadPriorityClass"}
    queue = next(d for d in docs if d.get("kind") == "ClusterQueue")
    flavor = next(d for d in docs if d.get("kind") == "ResourceFlavor")
    profile = next(d for d in docs if "policy" in d)["policy"]["spec"]["profiles"]["a100-80g"]
    assert profile["nodeSelector"] == flavor["spec"]["nodeLabels"], "the profile and the flavor name the same nodes"
    assert "nvidia.com/gpu" in queue["spec"]["resourceGroups"][0]["coveredResources"]
