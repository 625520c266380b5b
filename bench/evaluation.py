"""Answering held-out prompts against training: the demo's recipe (SmolLM2-135M-Instruct, LoRA r=32, Task API data)
at 1,200 training rows, 200 held-out prompts and 100 steps, through `sftop run --local`.

    python bench/evaluation.py [--rows 1200] [--prompts 200] [--steps 100]

It reports the run's wall time, its training time (the Trainer's own runtime of the 100 steps), the time spent
answering the held-out prompts before and after training, and the scores. Everything is written under a temporary
folder. The same script measures an older checkout of the code:

    PYTHONPATH=OLD/operator:OLD/trainer_image python bench/evaluation.py
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    from sftop import demo, local
    from sftop_trainer import evaluate, packaged, taskapi

    timings: list[tuple[int, float, int]] = []  # (step, seconds, answers)
    answer = evaluate.AnswerEval.run

    def timed(self, model, step):
        started = time.perf_counter()
        out = answer(self, model, step)
        timings.append((step, time.perf_counter() - started, len(self.items)))
        return out

    evaluate.AnswerEval.run = timed
    with tempfile.TemporaryDirectory(prefix="sftop-bench-eval-") as tmp:
        volumes = Path(tmp) / "volumes"
        packaged.place(packaged.model_folder(), volumes / "models" / packaged.FOLDER)
        train, test = taskapi.split(args.rows, args.prompts, seed=0)
        taskapi.write_jsonl(train, volumes / "data" / "task-api" / "train.jsonl")
        taskapi.write_jsonl(test, volumes / "data" / "task-api" / "test.jsonl")
        manifest = Path(tmp) / "sftjob.yaml"
        evaluation = "evaluation: {prompts: 50, samples: 3, fewShot: 3}"  # the demo's; measured here without
        assert evaluation in demo.MANIFEST  # few-shot, as before it existed
        text = demo.MANIFEST.replace("maxSteps: 100", f"maxSteps: {args.steps}").replace(
            evaluation, f"evaluation: {{prompts: {args.prompts}, samples: 3}}")
        manifest.write_text(text)
        started = time.perf_counter()
        run = local.run(manifest, volumes, progress_bar=False)
        wall = time.perf_counter() - started
    if run.exit_code != 0:
        print(run.message, file=sys.stderr)
        return 1
    result = run.result
    ev = result["evaluation"]
    before = [t for t in timings if t[0] == 0]
    after = [t for t in timings if t[0] != 0]
    report = {
        "wallSeconds": round(wall, 1),
        "trainSeconds": result["trainRuntimeSeconds"],
        "steps": result["steps"],
        "answerSecondsBefore": round(sum(t[1] for t in before), 1),
        "answerSecondsAfter": round(sum(t[1] for t in after), 1),
        "prompts": ev["prompts"],
        "before": {k: ev["before"].get(k) for k in ("exactMatch", "validJson", "evalLoss")},
        "after": {k: ev["after"].get(k) for k in ("exactMatch", "validJson", "evalLoss")},
    }
    report["answerOverTrain"] = round((report["answerSecondsBefore"] + report["answerSecondsAfter"])
                                      / report["trainSeconds"], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
