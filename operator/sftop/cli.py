"""The `sftop` command.

    sftop crd                          print the SFTJob CustomResourceDefinition
    sftop validate FILE...             check SFTJob manifests offline; exit 1 when any is invalid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _crd(args: argparse.Namespace) -> int:
    from sftop.crd import crd_yaml

    sys.stdout.write(crd_yaml())
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftop", description="Fine-tune LLMs on Kubernetes with SFTJobs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("crd", help="print the SFTJob CustomResourceDefinition (YAML)")
    p.set_defaults(func=_crd)

    p = sub.add_parser("validate", help="check SFTJob manifests against the CRD schema, its rules and the API "
                                        "models")
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML/JSON manifests, or folders of them")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the problems")
    p.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
