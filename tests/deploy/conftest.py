"""Shared fixtures of the deployment tests (tests/deploy).

* `lint_chart(overrides)`: runs the real Helm library's lint (PyPI helm-sdkpy) on a
  copy of helm/ferromq whose values.yaml has `overrides` deep-merged in: helm-sdkpy's
  lint takes a chart path only, so the values travel inside the copy.
* `docker_ok`: the Docker engine answers, else the test is skipped with the reason.
* `image`: deploy/image/build-local.sh has built ferromq:local from the release binary
  (built once with cargo if missing; the script skips the docker build when the image
  already holds that binary). FERROMQ_IMAGE_BINARY=PATH uses another binary.
"""

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .deployutil import CHART, IMAGE_TAG, REPO, deep_merge

# Helm lint severities (helm.sh/helm/v3/pkg/lint/support).
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


@pytest.fixture(scope="session")
def helm():
    try:
        import helm_sdkpy
    except ImportError as e:  # pragma: no cover - environment problem, say so
        pytest.fail(
            f"helm-sdkpy is not installed ({e}): "
            "python3 -m pip install --ignore-requires-python -r tests/deploy/requirements.txt"
        )
    return helm_sdkpy


@pytest.fixture
def lint_chart(helm, tmp_path):
    """Lints the chart with values overrides; returns [(severity name, path)]."""

    def run(overrides=None):
        chart = tmp_path / f"chart-{len(list(tmp_path.iterdir()))}" / "ferromq"
        shutil.copytree(CHART, chart)
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        values = deep_merge(values, overrides or {})
        (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        result = asyncio.run(helm.Lint(helm.Configuration()).run(str(chart)))
        return [
            (SEVERITY.get(m.get("Severity"), str(m.get("Severity"))), m.get("Path"))
            for m in result.get("Messages") or []
        ]

    return run


def docker_problem():
    """Why Docker cannot be used here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"the Docker engine does not answer: {r.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def docker_ok():
    problem = docker_problem()
    if problem:
        pytest.skip(f"needs Docker: {problem}")


def release_binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "ferromq"


@pytest.fixture(scope="session")
def image(docker_ok):
    """ferromq:local, built by deploy/image/build-local.sh."""
    binary = os.environ.get("FERROMQ_IMAGE_BINARY")
    cmd = [str(REPO / "deploy" / "image" / "build-local.sh"), "--tag", IMAGE_TAG]
    if binary:
        cmd += ["--binary", binary]
    # Otherwise the script runs `cargo build --release -p ferromq`: a no-op when the
    # release binary is up to date, several minutes on 2 cores from scratch.
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"build-local.sh failed:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip().splitlines()[-1] == IMAGE_TAG
    return IMAGE_TAG
