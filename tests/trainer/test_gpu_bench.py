"""bench/gpu.py's dry run: the benchmark's own code path (models, both trainers, the plan, the report) on the CPU with
the tiny model, so the GPU run is known to work before a GPU is spent on it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_dry_run_reports_every_method_against_the_plan_and_bare_trl(tmp_path):
    report_file = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--json", str(report_file)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["dryRun"] is True and report["device"] == "cpu" and report["peakTflops"] is None
    assert report["goals"] == {"peakWithinPlan": 0.15, "speedRatioAtLeast": 1.0}
    assert [c["method"] for c in report["cases"]] == ["lora", "qlora", "full"]
    for case in report["cases"]:
        assert case["steps"] == 2 and case["maxLength"] == 128 and case["parameters"] > 0
        assert case["planGiB"] > 0 and case["tokensPerSecond"] > 0 and case["bareTrlTokensPerSecond"] > 0
        assert case["speedRatio"] > 0
        assert case["peakGiB"] is None and case["mfu"] is None  # no GPU: no peak, no utilisation
    assert "| tiny | qlora |" in proc.stdout, "the Markdown table"


def test_the_benchmark_ships_the_published_llama_configs():
    from transformers import LlamaConfig

    for name, hidden, layers in (("llama-1b", 2048, 16), ("llama-8b", 4096, 32)):
        spec = json.loads((ROOT / "bench" / "models" / f"{name}.json").read_text())
        config = LlamaConfig(**{k: v for k, v in spec.items() if not k.startswith("_")})
        assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (hidden, layers, 128256)


def test_utilisation_and_memory_ratios_from_measured_runs():
    """What the GPU run reports from its measurements: MFU over the GPU's peak and the peak over the plan."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    params = {"parameters": 1_000_000_000, "layers": 16, "hidden": 2048}
    assert gpu.flops_per_token("full", params, 2048) == 6e9 + 12 * 16 * 2048 * 2048
    assert gpu.flops_per_token("lora", params, 2048) == 4e9 + 12 * 16 * 2048 * 2048
    gib = 1024**3
    run = {"tokens": 100_000, "runtime": 10.0, "steps": 10, "peak": 9 * gib}
    bare = {**run, "runtime": 11.0, "peak": 10 * gib}
    case = gpu.case_report("llama-1b", "full", params, {"max_length": 2048, "batch": 2}, (10.6, 10.0), run, bare,
                           989.0)
    assert case["peakOverPlan"] == 0.9 and case["speedRatio"] == 1.1 and case["bareTrlPeakGiB"] == 10.0
    assert case["mfu"] == round(10_000 * gpu.flops_per_token("full", params, 2048) / 989e12, 4)
