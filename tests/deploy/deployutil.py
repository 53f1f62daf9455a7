"""Constants and helpers shared by the deployment tests (imported by name, unlike
conftest.py, which pytest may load under the same module name as tests/python's)."""

import copy
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ferromq"
IMAGE_TAG = "ferromq:local"


def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
