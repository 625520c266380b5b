"""Helm, through helm-sdkpy (Helm v4 as a library; Python >= 3.12), for the chart tests.

    python helm_tool.py lint CHART VALUES_JSON
    python helm_tool.py render CHART VALUES_JSON KUBECONFIG RELEASE NAMESPACE

`render` installs the chart into the API server the kubeconfig names (the tests'
emulator) and prints the rendered manifest: helm-sdkpy has no template or dry-run call. Run it with
HELM_DRIVER=memory in its environment from the start (Helm reads it when the library loads), so the release
record stays in memory. Output: one JSON object.
"""

import asyncio
import json
import os
import shutil
import sys
import tempfile

import helm_sdkpy as helm


def _load_yaml(path):
    import yaml

    with open(path) as f:
        return yaml.safe_load(f) or {}


def _merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


async def main(argv):
    command, chart, values = argv[0], argv[1], json.loads(argv[2])
    if command == "lint":
        # Lint takes no values: lint a copy of the chart whose values.yaml carries them.
        os.environ.setdefault("KUBECONFIG", os.devnull)
        with tempfile.TemporaryDirectory() as tmp:
            copy = shutil.copytree(chart, os.path.join(tmp, os.path.basename(chart.rstrip("/"))))
            if values:
                merged = _merge(_load_yaml(os.path.join(copy, "values.yaml")), values)
                with open(os.path.join(copy, "values.yaml"), "w") as f:
                    json.dump(merged, f)  # JSON is YAML
            config = helm.Configuration(namespace="default")
            return {"lint": await helm.Lint(config).run(copy)}
    kubeconfig, release, namespace = argv[3], argv[4], argv[5]
    config = helm.Configuration(namespace=namespace, kubeconfig=kubeconfig)
    try:
        result = await helm.Install(config).run(release, chart, values=values, wait=False, timeout=60,
                                                create_namespace=False)
    except Exception as e:  # the test shows what Helm said
        return {"error": f"{type(e).__name__}: {e}"}
    return {"manifest": result.get("manifest", "")}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:])), default=str))
