"""The chart as Helm renders it (real Helm library, see fakekube.py), validated against
the Kubernetes API schemas (PyPI kubernetes-validate, offline) and checked for what
the design asks: Parallel StatefulSet, peer DNS, the bootstrap rule, probes, drain,
PDB, least RBAC, monitoring objects identical to deploy/."""

import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from .deployutil import CHART, REPO
from .fakekube import render
from .test_chart import ALL_ON

kubernetes_validate = pytest.importorskip("kubernetes_validate")

# Oldest supported (the preStop sleep action is on by default from 1.30) and newest.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}


@pytest.fixture(scope="module")
def default(helm):
    return render(helm, CHART)


@pytest.fixture(scope="module")
def all_on(helm):
    return render(helm, CHART, ALL_ON)


def by_kind(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} in {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return found[0]


def env_of(sts):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("which", ["default", "all_on"])
def test_rendered_objects_validate_against_kubernetes_schemas(request, which):
    objects, hooks, _ = request.getfixturevalue(which)
    for obj in objects + hooks:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "cert-manager.io/v1")
            assert obj["spec"], obj
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
    kinds = {o["kind"] for o in objects}
    if which == "all_on":
        assert CRD_KINDS <= kinds
        assert "Secret" in kinds  # the admin token
    else:
        assert not kinds & CRD_KINDS


def test_statefulset_shape(default):
    objects, _, _ = default
    sts = by_kind(objects, "StatefulSet", "ferromq")
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "ferromq-headless"
    assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert "podAntiAffinity" in pod["affinity"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    c = pod["containers"][0]
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert c["args"] == ["-c", "/etc/ferromq/config/$(POD_NAME).toml"]
    env = env_of(sts)
    assert env["FERROMQ_CLUSTER_ENABLED"] == "true"
    assert env["FERROMQ_CLUSTER_ADVERTISE"] == "$(POD_NAME).ferromq-headless.mqtt.svc.cluster.local:7946"
    assert env["FERROMQ_CLUSTER_SEEDS"] == ",".join(
        f"ferromq-{i}.ferromq-headless.mqtt.svc.cluster.local:7946" for i in range(3)
    )
    # POD_NAME is defined before the variables that expand it.
    names = [e["name"] for e in c["env"]]
    assert names.index("POD_NAME") < names.index("FERROMQ_CLUSTER_ADVERTISE")
    # sled cache = memory limit (1Gi) / 4
    assert env["FERROMQ_PERSISTENCE_CACHE_CAPACITY"] == str(1024**3 // 4)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"mqtt": 1883, "http": 8080, "grpc": 7946}


def test_services_pdb_and_rbac(default):
    objects, hooks, notes = default
    headless = by_kind(objects, "Service", "ferromq-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert [p["port"] for p in headless["ports"]] == [7946]
    client = by_kind(objects, "Service", "ferromq")["spec"]
    assert client["type"] == "ClusterIP" and [p["name"] for p in client["ports"]] == ["mqtt"]
    assert by_kind(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    role = by_kind(objects, "Role")
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["statefulsets"], "resourceNames": ["ferromq"], "verbs": ["get"]}
    ]
    binding = by_kind(objects, "RoleBinding")
    assert binding["subjects"][0]["name"] == "ferromq"
    test_pod = by_kind(hooks, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["args"][1:] == ["ferromq.mqtt.svc.cluster.local", "1883"]
    assert "helm test ferromq" in notes


def test_per_node_config_carries_the_bootstrap_rule(default):
    objects, _, _ = default
    data = by_kind(objects, "ConfigMap", "ferromq")["data"]
    assert sorted(data) == ["ferromq-0.toml", "ferromq-1.toml", "ferromq-2.toml"]
    for i in range(3):
        cfg = tomllib.loads(data[f"ferromq-{i}.toml"])
        assert cfg["cluster"] == {"bootstrap": "auto" if i == 0 else "never"}
        assert cfg["persistence"]["path"] == "/data"
        assert cfg["http"]["listen"] == "0.0.0.0:8080"
        assert cfg["listener"] == [{"name": "mqtt", "bind": "0.0.0.0:1883", "protocol": "mqtt"}]


def test_all_features_render_what_they_promise(all_on):
    objects, _, _ = all_on
    sts = by_kind(objects, "StatefulSet")
    env = env_of(sts)
    assert env["FERROMQ_CLUSTER_SEEDS"].count(",") == 4
    assert env["FERROMQ_CLUSTER_VOTERS"] == "5"
    assert env["FERROMQ_CLUSTER_CA_FILE"] == "/etc/ferromq/tls/cluster/ca.crt"
    assert env["FERROMQ_HTTP_TOKEN"]["secretKeyRef"]["name"] == "ferromq-http-token"
    pod = sts["spec"]["template"]["spec"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/etc/ferromq/tls/mqtt", "/etc/ferromq/tls/cluster", "/etc/ferromq/auth"} <= mounts
    # Secrets are mounted as directories (no subPath) so renewed certificates reach the broker.
    assert not any("subPath" in m for m in pod["containers"][0]["volumeMounts"])
    client = by_kind(objects, "Service", "ferromq")["spec"]
    assert client["type"] == "LoadBalancer"
    assert {p["name"]: p["port"] for p in client["ports"]} == {"mqtt": 1883, "mqtts": 8883, "ws": 8083, "wss": 8084, "http": 8080}
    node0 = tomllib.loads(by_kind(objects, "ConfigMap", "ferromq")["data"]["ferromq-0.toml"])
    protocols = {l["protocol"]: l for l in node0["listener"]}
    assert protocols["mqtts"]["require_certificate"] is True
    assert protocols["wss"]["certfile"] == "/etc/ferromq/tls/mqtt/tls.crt"
    assert node0["sys"] == {"interval": "30s"}  # extraConfig
    certs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Certificate"}
    assert "*.ferromq-headless.mqtt.svc.cluster.local" in certs["ferromq-cluster"]["spec"]["dnsNames"]
    assert "client auth" in certs["ferromq-cluster"]["spec"]["usages"]
    assert "mqtt.example.com" in certs["ferromq-mqtt"]["spec"]["dnsNames"]
    # Monitoring: exactly the repository's rules and dashboard.
    rule = by_kind(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    dash = by_kind(objects, "ConfigMap", "ferromq-dashboard")
    assert dash["metadata"]["namespace"] == "monitoring"
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["ferromq.json"]) == json.loads((REPO / "deploy/grafana/ferromq.json").read_text())
    sm = by_kind(objects, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["relabelings"][0] == {"targetLabel": "job", "replacement": "ferromq"}


def test_single_node_config_is_accepted_by_the_broker(helm, tmp_path):
    """The ferromq.toml the chart writes (single node: no [cluster] yet) loads and serves."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = Path(os.environ.get("FERROMQ_BIN", target / "debug" / "ferromq"))
    if not binary.exists():
        pytest.skip(f"no broker binary at {binary}")
    objects, _, _ = render(helm, CHART, {"replicaCount": 1, "cluster": {"enabled": False}, "listeners": {"ws": {"enabled": True}}})
    toml = by_kind(objects, "ConfigMap", "ferromq")["data"]["ferromq.toml"]
    cfg = tmp_path / "ferromq.toml"
    cfg.write_text(toml)
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROMQ_")}
    # The chart's container env, with loopback ephemeral ports for this machine.
    env.update(FERROMQ_PERSISTENCE_CACHE_CAPACITY=str(1024**3 // 4), FERROMQ_PERSISTENCE_PATH=str(tmp_path / "data"),
               FERROMQ_LISTEN="127.0.0.1:0", FERROMQ_HTTP_LISTEN="127.0.0.1:0")
    proc = subprocess.Popen([str(binary), "-c", str(cfg), "--ready-file", str(ready)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=5) if proc.poll() is not None else "not ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
