"""docs/quickstart.md, followed as written against the emulated cluster: every kubectl and sftop command of it runs
here in its order, in the namespace a fresh kind cluster gives (`default`). What cannot run here stands in as
little as it can: kind, docker and helm are checked to name what exists; `kubectl cp` copies to and from the claims'
folders through the helper pod's own mounts (the emulated API server serves no exec); the helper pod is made Ready
as kubelet would (the node here runs Jobs' pods only); the Hub is the stand-in, serving the tiny model under the
quickstart's model id; vLLM is its adapter loader's rules (harness.vllm)."""

import asyncio
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from harness import vllm
from harness.cluster import kubectl as harness_kubectl
from harness.cluster import obj
from sftop import cli

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "quickstart.md").read_text()
NS = "default"  # kind's, where the quickstart's manifests land
LIMIT = 600  # a generous bound for a loaded machine: the run takes about a minute on an idle one


def blocks(language: str) -> list[str]:
    """The doc's fenced blocks of one language ("" for plain ones), in order."""
    found, current = [], None
    for line in DOC.splitlines():
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                if current[0] == language:
                    found.append("\n".join(current[1]) + "\n")
                current = None
        elif current is not None:
            current[1].append(line)
    return found


def columns(table: str) -> list[dict[str, str]]:
    """kubectl's table as rows of {column: cell}, cut where the header's columns start (a cell may be empty)."""
    header, *rows = table.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    cut = [*starts[1:], None]
    return [{n: row[a:b].strip() for n, a, b in zip(names, starts, cut)} for row in rows]


async def kubectl(emu, *args: str) -> str:
    """A line of the doc's kubectl in its namespace (client-side validation off: kubectl cannot read the emulator's
    OpenAPI v2; the server validates)."""
    extra = ["--validate=false"] if args[0] == "apply" else []
    return await harness_kubectl(emu, args[0], *extra, *args[1:], namespace=NS, timeout=LIMIT)


def claim_path(emu, node, remote: str) -> Path:
    """`pod:/path` as the folder on the claim the pod mounts there."""
    pod_name, path = remote.split(":", 1)
    pod = obj(emu, "v1/pods", pod_name, NS)
    assert pod is not None, f"kubectl cp {remote}: no pod {pod_name}"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    for mount in pod["spec"]["containers"][0]["volumeMounts"]:
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return node.volume(claims[mount["name"]]) / path[len(mount["mountPath"]):].lstrip("/")
    raise AssertionError(f"kubectl cp {remote}: {pod_name} mounts nothing at {path}")


async def kubelet_makes_ready(emu, name: str) -> None:
    """What kubelet reports of a pod whose container runs: Running, Ready."""
    pod = obj(emu, "v1/pods", name, NS)
    assert pod is not None, f"no pod {name}"
    ready = [{"type": t, "status": "True"} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    resp = await emu.patch(f"/api/v1/namespaces/{NS}/pods/{name}/status",
                           json={"status": {"phase": "Running", "conditions": ready}},
                           headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status < 300, await resp.text()


@pytest.mark.parametrize("cluster", [{"hub": True}], indirect=True)
async def test_the_quickstart_runs_as_written_from_data_on_a_claim_to_an_adapter_that_answers(
        cluster, tiny_model, tmp_path, capsys, monkeypatch):
    emu, node, operator = cluster
    node.hub_offline = False
    model_id = yaml.safe_load((ROOT / "examples/quickstart/sftjob.yaml").read_text())["spec"]["model"]["hub"]["id"]
    operator.hub.add(model_id, tiny_model)
    monkeypatch.chdir(tmp_path)  # the user's shell: relative paths are the repository's, results land here
    for name in ("examples", "operator", "trainer_image", "helm"):
        (tmp_path / name).symlink_to(ROOT / name)
    shell: dict[str, str] = {}
    ran: list[str] = []

    for line in (raw.strip() for block in blocks("bash") for raw in block.splitlines()):
        if not line or line.startswith("#"):
            continue
        # the shell's expansions the doc uses: $NAME, and ${NAME#*:} (what follows the first colon)
        line = re.sub(r"\$\{(\w+)#\*:\}", lambda m: shell[m[1]].split(":", 1)[1], line)
        line = re.sub(r"\$(\w+)", lambda m: shell[m[1]], line)
        assigned = re.fullmatch(r"(\w+)=\$\((.*)\)", line)
        if assigned:
            words = shlex.split(assigned[2])
            assert words[0] == "kubectl", line
            shell[assigned[1]] = (await kubectl(emu, *words[1:])).strip()
            ran.append(line)
            continue
        words = shlex.split(line)
        if words[0] in ("kind", "docker", "helm"):  # no container runtime here: what they name must exist
            for word in words:
                if word.startswith(("operator/", "trainer_image/", "helm/")):
                    assert (ROOT / word).exists(), f"{line}: {word} does not exist"
            continue
        if words[0] == "sftop":
            assert cli.main(words[1:]) == 0, f"{line}: {capsys.readouterr()}"
            ran.append(line)
            continue
        assert words[0] == "kubectl", f"a command the quickstart test cannot follow: {line}"
        if words[1] == "cp":
            source, target = words[2:4]
            if ":" in target:
                destination = claim_path(emu, node, target)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, destination)
            else:
                shutil.copytree(claim_path(emu, node, source), tmp_path / target)
            ran.append(line)
            continue
        if words[1] == "wait" and any(w.startswith("pod/") for w in words):
            await kubelet_makes_ready(emu, next(w for w in words if w.startswith("pod/"))[4:])
        if words[1] == "delete":  # what the run said and what was fetched, before they go
            status = obj(emu, "sftop.dev/v1alpha1/sftjobs", "quickstart", NS)["status"]
            assert status["phase"] == "Succeeded"
            assert (tmp_path / "quickstart-result" / "adapter" / "adapter_model.safetensors").exists()
        ran.append(line)
        said = await kubectl(emu, *words[1:])
        if "{.status.phase}" in line:
            assert said.startswith("Succeeded:"), said
        if words[1:3] == ["get", "sftjobs"]:
            sample = columns(next(b for b in blocks("") if b.startswith("NAME")))
            shown = columns(said)
            assert list(sample[0]) == list(shown[0]), "the doc's sample shows kubectl's own columns"
            assert [shown[0][k] for k in ("NAME", "MODEL", "METHOD")] == \
                [sample[0][k] for k in ("NAME", "MODEL", "METHOD")], said

    assert any(r.startswith("kubectl delete") for r in ran), "the quickstart was followed to its end"
    result = tmp_path / "quickstart-result"
    assert (result / "loss.png").exists() and (result / "metrics.jsonl").exists()
    assert "loss" in capsys.readouterr().out, "sftop history drew the run's loss curve"

    # the Python snippet answers with the fetched adapter; its base model comes from the Hub by the id it names
    env = {**os.environ, "HF_ENDPOINT": operator.hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    # (asynchronously: the Hub stand-in answers from this test's event loop)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", blocks("python")[0], cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), LIMIT)
    assert proc.returncode == 0 and out.strip(), err.decode()[-2000:]

    # vLLM: the doc's rank is the one the run's serving handoff asks for, and vLLM's loader takes the folder
    serve = next(b for b in blocks("") if b.startswith("vllm serve")).split()
    rank = int(serve[serve.index("--max-lora-rank") + 1])
    assert rank == status["result"]["serving"]["vllmMaxLoraRank"]
    vllm.check_adapter(result / "adapter", max_lora_rank=rank)
