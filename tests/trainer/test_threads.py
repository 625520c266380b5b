"""CPU threads sized to the CPUs a trainer may use: its affinity, its cgroup's CPU quota, its share of a node's
training processes; the operator renders the thread variables from the pod's CPU limit."""

import os
import subprocess
import sys

from sftop_trainer.threads import available_cpus, cgroup_cpu_limit, threads_per_process


def cgroup_v2(root, path: str, limits: dict[str, str]):
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text + "\n")
    return f"0::{path}\n"


def test_cgroup_v2_quota_is_the_tightest_along_the_path(tmp_path):
    proc = cgroup_v2(tmp_path, "/kubepods/pod1/trainer", {
        "kubepods": "max 100000", "kubepods/pod1": "400000 100000", "kubepods/pod1/trainer": "250000 100000"})
    assert cgroup_cpu_limit(tmp_path, proc) == 2.5
    assert available_cpus(tmp_path, proc) == min(2, len(os.sched_getaffinity(0)))


def test_cgroup_v2_without_quota_is_unlimited(tmp_path):
    proc = cgroup_v2(tmp_path, "/", {".": "max 100000"})
    assert cgroup_cpu_limit(tmp_path, proc) is None
    assert available_cpus(tmp_path, proc) == len(os.sched_getaffinity(0))


def test_cgroup_v2_in_a_container_namespace_reads_the_mount_point(tmp_path):
    # Inside a pod, /proc/self/cgroup shows "0::/" while the quota is on the cgroup mounted at /sys/fs/cgroup.
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/\n") == 1.5
    assert available_cpus(tmp_path, "0::/\n") == 1  # 1.5 CPUs of quota: one thread, not two throttled ones


def test_cgroup_v1_cfs_quota(tmp_path):
    folder = tmp_path / "cpu,cpuacct" / "kubepods" / "pod1"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path, "4:cpu,cpuacct:/kubepods/pod1\n3:memory:/kubepods/pod1\n") == 3.0


def test_cgroup_v1_with_its_own_cpu_mount(tmp_path):
    folder = tmp_path / "cpu" / "pod-a"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("100000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path, "2:cpuacct:/pod-a\n1:cpu:/pod-a\n0::/\n") == 1.0


def test_threads_per_process_divides_the_cpus_among_a_nodes_training_processes():
    assert threads_per_process({}, cpus=8) == (8, "8 CPU(s) available / 1 process(es)")
    assert threads_per_process({"LOCAL_WORLD_SIZE": "4"}, cpus=8)[0] == 2
    assert threads_per_process({"LOCAL_WORLD_SIZE": "4"}, cpus=2)[0] == 1
    assert threads_per_process({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "4"}, cpus=8) == (3, "OMP_NUM_THREADS")


def test_a_trainer_limited_to_one_cpu_runs_one_torch_thread():
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "os.environ.pop('OMP_NUM_THREADS', None); "
            "from sftop_trainer.threads import size_threads; size_threads(); "
            "import torch; print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], "
            "os.environ['MKL_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "1", "1"]


def test_operator_renders_thread_variables_from_the_pods_cpu_limit():
    from sftop import api, render
    from sftop.settings import Settings

    def env_of(resources):
        spec = api.SFTJobSpec.model_validate({
            "model": {"hub": {"id": "org/model"}}, "dataset": {"hub": {"name": "org/data"}},
            "resources": resources, "output": {"pvc": {"claimName": "out"}}})
        job = render.job("j", "team-a", spec, render.run_id(spec), Settings())
        return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env_of({"cpu": "7500m", "gpus": 1})["OMP_NUM_THREADS"] == "7"
    assert env_of({"cpu": "16", "gpus": 4})["OMP_NUM_THREADS"] == "4"  # one training process per GPU
    assert env_of({"cpu": "500m", "gpus": 0})["OMP_NUM_THREADS"] == "1"
    assert env_of({"cpu": "8", "gpus": 1})["MKL_NUM_THREADS"] == "8"
