"""deploy/compose/docker-compose.yml: valid for the Compose tool, and a mirror of the
chart's StatefulSet (names, environment, ports, probes, drain time)."""

import re
import shutil
import subprocess

import pytest
import yaml

from .deployutil import CHART, REPO

COMPOSE = REPO / "deploy/compose/docker-compose.yml"


def compose_cmd():
    """`docker compose` (v2 plugin) if it works, else `docker-compose` (v1), else None."""
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def config():
    cmd = compose_cmd()
    if cmd is None:
        pytest.skip("needs Docker Compose (docker compose or docker-compose)")
    r = subprocess.run([*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_three_nodes_with_the_statefulset_peer_names(config):
    services = config["services"]
    # ferromq-3 and ferromq-4 are in the "scale" profile (replicaCount=5 in the chart).
    assert sorted(services) == [f"ferromq-{i}" for i in range(5)]
    assert [services[f"ferromq-{i}"].get("profiles") for i in range(5)] == [None, None, None, ["scale"], ["scale"]]
    seeds = "ferromq-0.ferromq-headless:7946,ferromq-1.ferromq-headless:7946,ferromq-2.ferromq-headless:7946"
    for i in range(5):
        s = services[f"ferromq-{i}"]
        name = f"ferromq-{i}.ferromq-headless"
        assert s["hostname"] == f"ferromq-{i}"
        assert s["networks"]["ferromq"]["aliases"] == [name]
        env = s["environment"]
        assert env["FERROMQ_CLUSTER_ENABLED"] == "true"
        assert env["FERROMQ_CLUSTER_ADVERTISE"] == f"{name}:7946"
        assert env["FERROMQ_CLUSTER_SEEDS"] == seeds
        # The chart's bootstrap rule: node 0 auto, the others never.
        assert env["FERROMQ_CLUSTER_BOOTSTRAP"] == ("auto" if i == 0 else "never")
        assert s["volumes"][0].startswith(f"data-{i}:/data")
        # Published on loopback only.
        assert all(str(p).startswith("127.0.0.1:") for p in s["ports"]), s["ports"]
        assert s["healthcheck"]["test"] == ["CMD", "/usr/local/bin/ferromq", "ctl", "health", "--ready"]
    assert config["networks"]["ferromq"]["name"] == "ferromq-headless"


def test_same_cluster_variables_and_drain_time_as_the_chart(config):
    sts = (CHART / "templates/statefulset.yaml").read_text()
    chart_vars = set(re.findall(r"name: (FERROMQ_CLUSTER_[A-Z_]+)", sts))
    chart_vars -= {"FERROMQ_CLUSTER_CA_FILE", "FERROMQ_CLUSTER_CERT_FILE", "FERROMQ_CLUSTER_KEY_FILE",
                   "FERROMQ_CLUSTER_LEADER_LOST_TIMEOUT"}  # optional in the chart
    env = config["services"]["ferromq-1"]["environment"]
    compose_vars = {k for k in env if k.startswith("FERROMQ_CLUSTER_")}
    # The chart puts the bootstrap setting in each node's file, Compose in its env;
    # Compose always sets the leader-lost timeout (the broker's default unless overridden).
    assert compose_vars - {"FERROMQ_CLUSTER_BOOTSTRAP", "FERROMQ_CLUSTER_LEADER_LOST_TIMEOUT"} == chart_vars
    assert env["FERROMQ_CLUSTER_LEADER_LOST_TIMEOUT"] == "10s"
    assert env["FERROMQ_PERSISTENCE_ENABLED"] == "true"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    grace = config["services"]["ferromq-0"]["stop_grace_period"]
    assert grace == f"{values['drain']['terminationGracePeriodSeconds']}s"
