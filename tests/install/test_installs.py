"""Every documented install works alone: a clean virtual environment with exactly that install runs the commands
users run with it. This is what an image build would prove, without Docker.

- `sftop[cli]`: `sftop validate examples/`; commands of other extras say which extra to install.
- `sftop[operator]`, and the operator image's steps (operator/requirements.txt, then the package `--no-deps`):
  `sftop operator` against the emulated API server until it reconciles an SFTJob.
- the trainer image's steps (trainer_image/requirements.txt, then the package `--no-deps`): `sftop-train
  --validate` and a few training steps on the tiny model. `sftop[trainer]` resolves to exactly the same packages
  and versions (pip's own resolver, in a dry run), so it is the same environment.
- `sftop[demo]` resolves to the trainer's packages, the CLI's and gguf; the README's first command, which CI runs in
  a fresh environment, installs exactly it and runs `sftop demo` to the end.

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
from pathlib import Path

import pytest

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


def resolved(*requirements: str) -> dict[str, str]:
    """What pip would install into an empty environment for `requirements`: {package: version}, from pip's resolver in
    a dry run (no install)."""
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                          "--disable-pip-version-check", "--report", "-", "-c", str(ROOT / "constraints.txt"),
                          *requirements], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in report["install"]}


def test_the_trainer_extra_is_the_trainer_images_environment_and_the_demo_extra_adds_the_cli(wheel):
    image = resolved("-r", str(ROOT / "trainer_image" / "requirements.txt"), f"sftop @ {wheel.as_uri()}")
    extra = resolved(f"sftop[trainer] @ {wheel.as_uri()}")
    assert extra == image
    assert "torch" in extra and "kopf" not in extra and "jsonschema" not in extra
    demo = resolved(f"sftop[demo] @ {wheel.as_uri()}")
    cli = resolved(f"sftop[cli] @ {wheel.as_uri()}")
    assert {k: demo.get(k) for k in extra} == extra and {k: demo.get(k) for k in cli} == cli
    gguf = resolved(f"gguf=={demo['gguf']}")
    assert set(demo) - set(extra) - set(cli) <= set(gguf), "the demo adds only gguf (and what it needs)"


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
