"""Reading manifests the way kubectl, Argo CD and Flux read them.

They parse YAML with go-yaml (sigs.k8s.io/yaml), then send JSON to the API server. PyYAML's safe loader differs
from go-yaml in ways that change what a manifest says:

- `2e-4` and `1e3` are numbers to go-yaml; PyYAML's YAML 1.1 floats need a dot and a signed exponent, so it
  reads them as strings (and a schema then rejects `learningRate: 2e-4`, the way most people write it);
- `2024-01-01` stays a string in go-yaml's generic decoding (a timestamp object in PyYAML);
- `1:30` is a string to go-yaml (PyYAML: the base-60 integer 90).

Booleans agree (go-yaml v2 reads yes/no/on/off as YAML 1.1 does). Numbers then travel as JSON, where a
float with no fraction (`maxSteps: 1e3`) arrives as the integer 1000, so integral floats become ints here too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# go-yaml v2's plain-scalar float (resolve.go), beside the special values YAML 1.1 already has.
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
# go-yaml v2's plain-scalar integer: strconv.ParseInt(base 0) after removing underscores; no base 60.
_INT = re.compile(r"^[-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|0o?[0-7_]+|[0-9][0-9_]*)$")
_JSON_INTEGRAL = 1e21  # Go's JSON encoder writes floats below this without an exponent


class KubernetesLoader(yaml.SafeLoader):
    """PyYAML's safe loader with go-yaml's resolution of plain scalars."""


KubernetesLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
KubernetesLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
KubernetesLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _int(loader: KubernetesLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text.startswith(("0b", "0x", "0o")):
        return sign * int(text, 0)
    if len(text) > 1 and text.startswith("0") and set(text) <= set("01234567"):  # octal, as Go's base 0 reads it
        return sign * int(text, 8)
    return sign * int(text)


KubernetesLoader.add_constructor("tag:yaml.org,2002:int", _int)


def _as_json(value: Any) -> Any:
    """What the value is after the JSON trip to the API server: integral floats are integers."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < _JSON_INTEGRAL:
        return int(value)
    return value


def load_all(text: str) -> list[Any]:
    """Every document of a YAML (or JSON) stream, as the API server would receive it; empty documents dropped."""
    return [_as_json(doc) for doc in yaml.load_all(text, Loader=KubernetesLoader) if doc is not None]


def read(path: Path) -> list[Any]:
    return load_all(path.read_text())
