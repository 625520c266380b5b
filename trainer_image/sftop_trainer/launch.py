"""The training processes of one pod: torchrun of `sftop_trainer`, one process per GPU, and, for a multi-node run,
the c10d rendezvous that gathers the Indexed Job's pods.

The launcher owns the pod's outcome. Each training process leaves its exit code and its result (or failure) in a
status file; the launcher stops the pod's processes at the first failure of their own, exits with the worst code
(`worst`), and writes the pod's termination message from the first process that failed with that code, so the
operator reads the reason and message of a multi-process failure exactly as of a single process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftop_trainer.errors import EXIT_CLASSES, USER_ERROR_CODES, ExitCode
from sftop_trainer.result import failure, write_termination_message

log = logging.getLogger("sftop_trainer")

ELASTIC_RESTARTS = 3  # in-place restarts of a pod's processes after another pod of the group was lost
# How long a pod waits for the others to join (scheduling, image pulls, a replacement pod): SFTOP_RENDEZVOUS_TIMEOUT.
RENDEZVOUS_TIMEOUT = 1800


@dataclass(frozen=True)
class Group:
    """Where this pod stands in a multi-node run: the pods' count, its index, the rendezvous host (pod 0) and its own
    stable address. A pod reads them from its environment (the Indexed Job and the operator's rendering)."""

    nodes: int
    index: int
    rendezvous: str  # host:port of pod 0
    address: str  # this pod's own stable name (its headless Service DNS name)
    run_id: str
    timeout: int = RENDEZVOUS_TIMEOUT  # seconds to wait for every pod to join

    @classmethod
    def from_env(cls, nodes: int, run_id: str | None) -> Group:
        env = os.environ
        missing = [v for v in ("JOB_COMPLETION_INDEX", "SFTOP_RENDEZVOUS") if not env.get(v)]
        if missing:
            raise ValueError(f"distribution.nodes is {nodes} but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not set: a multi-node run runs as an Indexed Job "
                             f"(or `sftop run --local`), which sets them")
        return cls(nodes=nodes, index=int(env["JOB_COMPLETION_INDEX"]), rendezvous=env["SFTOP_RENDEZVOUS"],
                   address=env.get("SFTOP_NODE_ADDRESS") or socket.getfqdn(), run_id=run_id or "sftop",
                   timeout=int(env.get("SFTOP_RENDEZVOUS_TIMEOUT") or RENDEZVOUS_TIMEOUT))


def launch_command(processes: int, config: str, status_file: str, group: Group | None = None) -> list[str]:
    """torchrun of this package, one process per GPU (or per requested CPU process). Inside each process, the
    Trainer's accelerate backend does the data parallelism (DDP or FSDP: NCCL on GPUs, gloo on CPUs).

    Several nodes meet through torchrun's c10d rendezvous hosted by pod 0. torchrun numbers the nodes by their
    addresses, sorted: pod 0's name (`<job>-0.<service>...`) sorts first, so the run's rank 0 (progress, result,
    checkpoints) is always on pod 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if group is None:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        cmd += ["--nnodes", str(group.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", group.rendezvous,
                "--rdzv-id", group.run_id, "--rdzv-conf", f"is_host={str(group.index == 0).lower()},"
                f"join_timeout={group.timeout},read_timeout={min(60, group.timeout)}",
                "--local-addr", group.address, "--max-restarts", str(ELASTIC_RESTARTS)]
    return cmd + ["--nproc_per_node", str(processes), "-m", "sftop_trainer", "--config", config, "--no-progress-bar",
                  "--status-file", status_file]


# A process's own failure ends its pod at once (the Job counts it, podFailurePolicy applies); only a lost peer, or an
# interruption, lets torchrun restart the pod's processes in place to meet the replacement pod.
IN_PLACE = {int(ExitCode.PEER_LOST), int(ExitCode.OK)}


def worst(codes: list[int]) -> int:
    """The code a pod exits with, given its processes': a user error first, then any other failure of its own, then
    a lost peer."""
    failed = [c for c in codes if c != 0]
    own = [c for c in failed if c not in IN_PLACE]
    return next((c for c in own if c in USER_ERROR_CODES), next(iter(own or failed), 0))


def write_status(status_file: str, code: int, result: dict[str, Any]) -> None:
    """A launched process's outcome for the launcher: its exit code and, when it failed, its failure. Written to a
    temporary name and renamed, so the launcher never reads half a file."""
    path = Path(f"{status_file}-{os.environ.get('LOCAL_RANK', '0')}.json")
    text = json.dumps({"exitCode": code, "time": time.time(), "pid": os.getpid(),
                       "rank": int(os.environ.get("RANK", "0")),
                       "localRank": int(os.environ.get("LOCAL_RANK", "0")),
                       "round": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
                       "failure": result if code else None})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def announce(status_file: str) -> None:
    """A launched process says it started (its pid and local rank), for the launcher's watch (`Ranks`)."""
    rank = os.environ.get("LOCAL_RANK", "0")
    path = Path(f"{status_file}-{rank}.pid")
    tmp = path.with_suffix(".pid-tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "localRank": int(rank)}))
    tmp.replace(path)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie has ended: it only waits for its parent to read its exit code)."""
    if not Path("/proc/self/stat").exists():  # no procfs (macOS): whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Ranks:
    """The launcher's watch over the training processes of a pod that is the whole run: each announces itself when
    it starts, and `look` (every half second) finds the ones that ended. The processes that ended without leaving a
    status (killed by a signal) while another still ran, found at the first look at which any had ended, are the
    failure's cause (`first`), even when the others leave no status either: torchrun SIGKILLs a survivor that does
    not stop within its grace (one blocked in a collective with the dead process).

    Not for a pod of a multi-node run: there a process also ends without a word because another pod was lost
    (torchrun stops the processes to meet the replacement; NCCL aborts on a lost peer), no failure of this pod's."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ended: set[int] = set()  # pids found ended
        self.first: list[int] = []  # local ranks

    def look(self) -> None:
        try:
            announced = []
            for f in self.folder.glob("rank-*.pid"):
                try:
                    info = json.loads(f.read_text())
                    announced.append((int(info["pid"]), int(info["localRank"])))
                except (ValueError, KeyError, TypeError, OSError):
                    continue
            running = [pid for pid, _ in announced if alive(pid)]
            ended = [(pid, rank) for pid, rank in announced if pid not in running and pid not in self.ended]
            if not ended:
                return
            # a status is written before its process ends, so it is on disk by now
            spoke = {s.get("pid") for s in read_statuses(self.folder)}
            if not self.ended and running and not any(pid in spoke for pid, _ in ended):
                self.first = sorted(rank for _, rank in ended)
            self.ended.update(pid for pid, _ in ended)
        except Exception as e:  # the watch only sharpens a message: it never stops the launcher
            log.debug("watching the training processes: %s", e)


def read_statuses(folder: Path) -> list[dict[str, Any]]:
    """The statuses the pod's processes left in torchrun's latest round (an elastic restart starts a new one; an
    earlier round's files are stale), oldest first."""
    out = []
    for f in folder.glob("rank-*.json"):
        try:
            status = json.loads(f.read_text())
            status["exitCode"] = int(status["exitCode"])
        except (ValueError, KeyError, OSError):
            continue
        out.append(status)
    latest = max((s.get("round", 0) for s in out), default=0)
    return sorted((s for s in out if s.get("round", 0) == latest), key=lambda s: s.get("time", 0))


# What the surviving processes say when torchrun stopped them because another one died.
STOPPED_WITH_THE_OTHERS = {int(ExitCode.INTERRUPTED), int(ExitCode.PEER_LOST)}


def died_silently(statuses: list[dict[str, Any]], processes: int, signalled: bool,
                  first: list[int] = ()) -> str | None:
    """A process that died without a status (killed by a signal: the node's OOM killer, a segfault, an NCCL abort)
    while the pod itself was not told to stop: the survivors only say they were interrupted or lost a peer (or say
    nothing, when torchrun had to kill them too), which the Job does not count, so a crash that repeats would retry
    forever. `first` is the launcher's watch (`Ranks`): the processes that died first, without a word. Returns the
    message that makes it count, naming them."""
    if signalled:
        return None
    seen = {s.get("localRank") for s in statuses}
    missing = sorted(set(range(processes)) - seen)
    codes = {s["exitCode"] for s in statuses}
    if not missing or not codes <= STOPPED_WITH_THE_OTHERS:
        return None
    named = [rank for rank in first if rank in missing]
    if not statuses and not named:  # nothing spoke and none was seen dying first: torchrun's own failure, said below
        return None
    return (f"training process(es) of local rank {', '.join(map(str, named or missing))} ended without a word "
            f"(killed by a signal: out of host memory, a segfault, a NCCL abort?); the others stopped with them")


def pod_outcome(statuses: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
    """The pod's exit code (`worst`) and the failure that explains it: the first process to fail with that code."""
    code = worst([s["exitCode"] for s in statuses])
    if not code:
        return 0, None
    first = next((s for s in statuses if s["exitCode"] == code), None)
    reported = (first or {}).get("failure")
    if not reported:
        reported = failure(ExitCode(code) if code in EXIT_CLASSES else ExitCode.UNEXPECTED,
                           EXIT_CLASSES.get(code, EXIT_CLASSES[int(ExitCode.UNEXPECTED)]).reason,
                           f"a training process exited with code {code}")
    return code, reported


def launch(processes: int, config: str, group: Group | None = None) -> int:
    """Run the training processes and exit with their class of failure (torchrun turns any failure into exit code 1,
    so the processes leave their real codes and failures in status files). On failure this writes the pod's
    termination message; on success the run's first process has written it (the result)."""
    with tempfile.TemporaryDirectory(prefix="sftop-") as tmp:
        status = Path(tmp) / "status"
        status.mkdir()
        cmd = launch_command(processes, config, str(status / "rank"), group)
        log.info("launching %d training processes%s: %s", processes,
                 f" on node {group.index} of {group.nodes}" if group else "", " ".join(cmd))
        env = {**os.environ, "SFTOP_LAUNCHED": "1"}
        if group is not None:
            # torchrun shares its rendezvous store with the workers only from the first round on: a pod that
            # replaces a lost one would wait forever for the address of the workers' store. Unshared, pod 0's
            # agent publishes it every round.
            env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        if not env.get("OMP_NUM_THREADS"):  # torchrun would set 1; share this process's CPUs among the workers
            from sftop_trainer.threads import available_cpus

            env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // processes))
        child = subprocess.Popen(cmd, start_new_session=True, env=env)
        signalled = []  # the pod was told to stop (preemption, eviction, suspend): interruptions are expected

        def forward(signum, frame):
            signalled.append(signum)
            os.killpg(child.pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        ranks = Ranks(status)
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if group is None:
                ranks.look()
            own = worst([s["exitCode"] for s in read_statuses(status)])
            if own not in IN_PLACE and own != ExitCode.INTERRUPTED:
                log.info("a training process failed (exit code %d): stopping this pod's processes", own)
                os.killpg(child.pid, signal.SIGTERM)  # torchrun stops its workers (each in a session of its own)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                code = 1
                break
        statuses = read_statuses(status)
        if code == 0:
            return 0
        if group is None:
            ranks.look()
        silent = died_silently(statuses, processes, bool(signalled), ranks.first)
        if silent:
            log.error("%s", silent)
            write_termination_message(failure(ExitCode.UNEXPECTED, EXIT_CLASSES[ExitCode.UNEXPECTED].reason, silent))
            return int(ExitCode.UNEXPECTED)
        if statuses:
            pod_code, reported = pod_outcome(statuses)
            if pod_code:
                write_termination_message(reported)
                return pod_code
        if group is None:
            message = f"the training processes stopped (torchrun exit code {code}) without saying why; see the log"
            write_termination_message(failure(ExitCode.UNEXPECTED, EXIT_CLASSES[ExitCode.UNEXPECTED].reason, message))
            return int(ExitCode.UNEXPECTED)
        # torchrun itself gave up: the rendezvous was never reached, or its host (pod 0) was lost
        if (status / "started").exists():
            exit_code, message = ExitCode.PEER_LOST, f"lost the group's rendezvous at {group.rendezvous} (pod 0)"
        else:
            exit_code, message = ExitCode.UNEXPECTED, (
                f"the group's rendezvous at {group.rendezvous} did not complete: check that the run's pods can reach "
                f"each other (a NetworkPolicy, the headless Service) and that all {group.nodes} were admitted")
        log.error("%s", message)
        write_termination_message(failure(exit_code, EXIT_CLASSES[exit_code].reason, message))
        return int(exit_code)
