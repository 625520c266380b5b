"""The data-quality report at scale: every row-level check of sftop_trainer.quality (duplicates, near duplicates,
conflicts, leakage, size, answer format, coverage, empty turns, special tokens) over 100,000 Task API chat rows and
a 5,000-row evaluation file, with problems planted in both.

    python bench/data_quality.py [--rows 100000] [--eval-rows 5000]

It reports the wall time of the report (the rows already converted, as the Validating phase has them; reading the
file and tokenizing it are the plan's own, measured in bench/validation.py), the time of the near-duplicate
search alone, the process's peak resident memory before and after, and what was found against what was planted.
The checks that need tokens (truncated answers, rows without loss) count from the masks tokenization made: a sum
per row, included in the plan's time.
"""

import argparse
import json
import random
import resource
import time


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--eval-rows", type=int, default=5_000)
    args = parser.parse_args()

    from sftop_trainer import quality, taskapi
    from sftop_trainer.config import DataQuality

    rng = random.Random(0)
    train, evaluation = taskapi.split(args.rows, args.eval_rows, seed=7)
    planted = {"duplicates": args.rows // 100, "conflicts": args.rows // 200, "leakage": args.eval_rows // 50}
    for _ in range(planted["duplicates"]):
        train.append(json.loads(json.dumps(rng.choice(train[: args.rows]))))
    for r in rng.sample(train[: args.rows], planted["conflicts"]):
        answer = json.loads(r["messages"][-1]["content"])
        answer["action"] = "delete" if answer.get("action") != "delete" else "create"
        train.append({"messages": [r["messages"][0], {"role": "assistant", "content": json.dumps(answer)}]})
    evaluation += [json.loads(json.dumps(r)) for r in rng.sample(train[: args.rows], planted["leakage"])]
    before = peak_mib()

    started = time.perf_counter()
    findings, near = quality.check(train, list(range(1, len(train) + 1)), evaluation,
                                   list(range(1, len(evaluation) + 1)), DataQuality())
    report_seconds = time.perf_counter() - started
    started = time.perf_counter()
    quality._grams.cache_clear()
    quality._NearIndex([x for x in quality._Rows(train, list(range(len(train))), "t").whole], 0.8)
    near_seconds = time.perf_counter() - started

    print(f"rows: {len(train)} training, {len(evaluation)} evaluation")
    print(f"report: {report_seconds:.1f} s (near-duplicate search alone, again: {near_seconds:.1f} s)")
    print(f"peak resident memory: {before:.0f} MiB with the rows loaded, {peak_mib():.0f} MiB after the report")
    print(f"near-duplicate search covered {near['searchedRows']} rows (limited: {near['limited']})")
    print("planted: " + ", ".join(f"{k} {v}" for k, v in planted.items()))
    for f in findings:
        print(f"  {f.action:<5} {f.check:<15} {f.file:<5} {f.count:>6}  {f.message[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
