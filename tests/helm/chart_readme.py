"""The chart README's values table, from values.yaml's `# --` comments (helm-docs's comment format: a `# --` line
right above a key documents it, with the key's full dotted path, its type and its default).

    python tests/helm/chart_readme.py    # rewrites the table in helm/sftop/README.md
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "sftop"
BEGIN, END = "<!-- values: generated from values.yaml by tests/helm/chart_readme.py -->", "<!-- end of values -->"


def documented_values(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) of every key with a `# --` comment, in file order."""
    out, path, comment = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("# --"):
            comment = stripped.removeprefix("# --").strip()
            continue
        if stripped.startswith(("#", "-")):
            continue
        indent = (len(line) - len(line.lstrip())) // 2
        key = stripped.partition(":")[0]
        path = path[:indent] + [key]
        if comment is not None:
            out.append((".".join(path), comment))
        comment = None
    return out


def _lookup(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values[part]
    return values


def _type(value) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), "string")


def table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, description in documented_values(values_text):
        value = _lookup(values, key)
        default = json.dumps(value) if not isinstance(value, dict) or value else "{}"
        cell = description.replace("|", "\\|")
        rows.append(f"| {key} | {_type(value)} | `{default}` | {cell} |")
    return "\n".join(rows)


def render(readme: str, values_text: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table(values_text)}\n{END}{tail}"


if __name__ == "__main__":
    readme = CHART / "README.md"
    readme.write_text(render(readme.read_text(), (CHART / "values.yaml").read_text()))
