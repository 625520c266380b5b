"""Every documented install works alone: a clean virtual environment with exactly that install runs the commands
users run with it. This is what an image build would prove, without Docker.

- `sftop[cli]`: `sftop validate examples/`; commands of other extras say which extra to install.
- `sftop[operator]`, and the operator image's steps (operator/requirements.txt, then the package `--no-deps`):
  `sftop operator` against the emulated API server until it reconciles an SFTJob.
- the trainer image's steps (trainer_image/requirements.txt, then the package `--no-deps`): `sftop-train
  --validate` and a few training steps on the tiny model. `sftop[trainer]` has the same roots, pinned by
  constraints.txt at the image's versions, so pip resolves it to the same environment.
- `sftop[demo]` is the trainer's packages, the CLI's and gguf; the README's first command, which CI runs in a fresh
  environment, installs exactly it and runs `sftop demo` to the end.

The package is built once into a wheel from a copy of the sources (a build writes into its source tree); each
environment installs it from there with pip, under the pins CI tests (constraints.txt).
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.cluster import NS, apply, objs, sftjob, status_of, wait_for

ROOT = Path(__file__).resolve().parents[2]


def pip(python: Path, *args: str) -> None:
    """pip of the test run installing into `python`'s environment: the environment itself gets no pip, and nothing
    is compiled ahead (the commands below compile what they import)."""
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                          "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"), *args],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("sftop-src")
    for name in ("pyproject.toml", "README.md", "operator", "trainer_image"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (ROOT / name).is_dir() else {}))
    dist = tmp_path_factory.mktemp("wheel")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                          "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return next(dist.glob("sftop-*.whl"))


def venv(tmp_path: Path, wheel: Path, extra: str | None = None, requirements: str | None = None) -> Path:
    """A clean environment with exactly one documented install: an extra of the package, or an image's
    requirements file followed by the package without its dependencies (as the Dockerfiles do)."""
    folder = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    if requirements:
        pip(python, "-r", str(ROOT / requirements))
        pip(python, "--no-deps", str(wheel))
    else:
        pip(python, f"sftop[{extra}] @ {wheel.as_uri()}")
    return folder / "bin"


def run(bin_: Path, *cmd: str, env: dict | None = None, cwd: Path = ROOT, timeout: int = 600):
    return subprocess.run([str(bin_ / cmd[0]), *cmd[1:]], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", **(env or {})})


def says_which_extra(out, extra: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"pip install 'sftop[{extra}]'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_the_cli_extra_validates_manifests_and_names_the_extra_other_commands_need(tmp_path, wheel):
    bin_ = venv(tmp_path, wheel, extra="cli")
    out = run(bin_, "sftop", "validate", "examples/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 problem(s)" in out.stderr
    says_which_extra(run(bin_, "sftop", "plan", "examples/task-api-smollm2.yaml"), "trainer")
    says_which_extra(run(bin_, "sftop", "operator"), "operator")
    says_which_extra(run(bin_, "sftop", "demo", "--dir", str(tmp_path / "demo")), "demo")


async def operator_reconciles(bin_: Path, apiserver) -> None:
    """`sftop operator` from `bin_` against the emulated API server: an applied SFTJob gets its status and its Job."""
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SFTOP_K8S_SERVER": str(apiserver.url).rstrip("/"),
           "SFTOP_METRICS_PORT": "0", "SFTOP_HEALTH_PORT": "0", "SFTOP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([str(bin_ / "sftop"), "operator"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        await apply(apiserver, sftjob())
        try:
            await wait_for(lambda: objs(apiserver, "batch/v1/jobs") and status_of(apiserver).get("phase"), timeout=60)
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()[1][-3000:]) from None
        assert status_of(apiserver)["phase"] in ("Pending", "Running"), status_of(apiserver)
        assert [j["metadata"]["namespace"] for j in objs(apiserver, "batch/v1/jobs")] == [NS]
    finally:
        # Waited for without blocking the event loop: the emulated API server runs on it, and an operator that has a
        # request in flight when SIGTERM arrives needs its answer to stop.
        proc.terminate()
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            raise AssertionError("sftop operator did not stop within 60 s of SIGTERM")


@pytest.mark.parametrize("install", ["extra", "image"])
async def test_the_operator_install_runs_the_operator(tmp_path, wheel, apiserver, install):
    bin_ = venv(tmp_path, wheel, extra="operator") if install == "extra" else \
        venv(tmp_path, wheel, requirements="operator/requirements.txt")
    await operator_reconciles(bin_, apiserver)
    out = run(bin_, "sftop", "validate", "examples/")
    assert out.returncode == 0, out.stdout + out.stderr
    says_which_extra(run(bin_, "sftop", "plan", "examples/task-api-smollm2.yaml"), "trainer")


def pins(path: Path) -> dict[str, str]:
    """A requirements or constraints file's exact pins: {package: version}."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            found[canonicalize_name(req.name)] = spec.version
    return found


def extra(name: str) -> tuple[dict[str, Requirement], set[str]]:
    """An extra's own requirements (with the base install's) by package, and the extras it includes."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][name]]
    own = {canonicalize_name(r.name): r for r in reqs if canonicalize_name(r.name) != "sftop"}
    included = {e for r in reqs if canonicalize_name(r.name) == "sftop" for e in r.extras}
    return own, included


def test_the_trainer_extra_is_the_trainer_images_environment_and_the_demo_extra_adds_the_cli():
    """pip resolves the same root requirements at the same exact versions, under the same constraints, to the same
    environment: so `sftop[trainer]` under constraints.txt is the trainer image when its roots are the image's
    requirements and constraints.txt pins each at the image's version (which the extra's range admits). The image's
    own install is proven by test_the_trainer_image_validates_and_trains, the demo's by the README's first command."""
    image, constraints = pins(ROOT / "trainer_image" / "requirements.txt"), pins(ROOT / "constraints.txt")
    trainer, included = extra("trainer")
    assert not included and set(trainer) == set(image), "the trainer extra's packages are the image's"
    for name, req in trainer.items():
        assert constraints.get(name) == image[name], f"constraints.txt pins {name} at the image's {image[name]}"
        assert req.specifier.contains(image[name]), f"the trainer extra's {req} admits the image's {image[name]}"
    assert "kopf" not in trainer and "jsonschema" not in trainer
    demo, included = extra("demo")
    assert included == {"cli", "trainer"}, "the demo is the trainer's environment and the CLI's"
    assert set(demo) - set(trainer) == {"gguf"} and "gguf" in constraints, "the demo adds only gguf, pinned"


def test_the_trainer_image_validates_and_trains(tmp_path, wheel, tiny_model):
    from sftop_trainer import taskapi

    bin_ = venv(tmp_path, wheel, requirements="trainer_image/requirements.txt")
    data = tmp_path / "train.jsonl"
    taskapi.write_jsonl(taskapi.rows(32), data)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"name": str(tiny_model)}, "dataset": {"path": str(data)}, "method": "lora",
        "training": {"maxSteps": 3, "perDeviceTrainBatchSize": 4, "loggingSteps": 1},
        "output": {"dir": str(tmp_path / "out")}, "progress": {"port": 0}}))
    env = {"HF_HUB_OFFLINE": "1", "SFTOP_TERMINATION_LOG": str(tmp_path / "term"), "OMP_NUM_THREADS": "1"}
    out = run(bin_, "sftop-train", "--config", str(config), "--validate", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert json.loads((tmp_path / "term").read_text())["plan"]["totalSteps"] == 3
    out = run(bin_, "sftop-train", "--config", str(config), "--no-progress-bar", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "Succeeded" and result["steps"] == 3
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (bin_ / "kopf").exists() and run(bin_, "python", "-c", "import kopf").returncode != 0, \
        "the trainer install brings no operator libraries"
