"""The manifests in examples/ are what users copy: every one must be valid as it stands."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sftop import api
from sftop.cli import main
from sftop.validate import is_sftjob, validate_document

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples_for_each_use():
    names = {p.stem for p in EXAMPLES}
    assert {"lora-chat-hub", "qlora-8b-24gb", "full-small-model", "pvc-instruction-data", "kueue-priority",
            "gitops-pinned", "gitops-gated"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    sftjobs = [d for d in docs if is_sftjob(d)]
    assert sftjobs, f"{path.name} has no SFTJob"
    for doc in sftjobs:
        assert validate_document(doc) == []
        api.SFTJob.model_validate(doc)
    for doc in docs:
        if not is_sftjob(doc):  # the PVCs, ConfigMaps and PriorityClasses beside them
            kubernetes_validate.validate(doc, "1.32.0", strict=True)


def test_sftop_validate_accepts_the_examples_folder():
    assert main(["validate", "-q", str(EXAMPLES[0].parent)]) == 0


def test_gitops_example_pins_every_revision():
    doc = next(d for d in yaml.safe_load_all((EXAMPLES[0].parent / "gitops-pinned.yaml").read_text())
               if d and is_sftjob(d))
    spec = api.SFTJobSpec.model_validate(doc["spec"])
    assert spec.model.hub is not None and len(spec.model.hub.revision) == 40
    assert spec.dataset.hub is None or spec.dataset.hub.revision  # data in git, or a pinned Hub revision
    assert spec.image and not spec.image.endswith(":latest")

