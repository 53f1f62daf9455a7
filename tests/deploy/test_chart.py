"""The Helm chart (helm/ferromq), checked with the real Helm library.

helm-sdkpy wraps Helm's Go packages: its lint renders every template with the given
values, validates the values against values.schema.json and checks the rendered YAML
and Chart.yaml. No Kubernetes API is needed (none runs here).
"""

import json

import jsonschema
import pytest
import yaml

from .deployutil import CHART, REPO, deep_merge

# Every optional feature of values.yaml turned on at once.
ALL_ON = {
    "replicaCount": 5,
    "cluster": {
        "voters": 5,
        "leaderLostTimeoutMs": 3000,
        "tls": {
            "enabled": True,
            "certManager": {"enabled": True, "issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer"}},
        },
    },
    "listeners": {
        "mqtts": {"enabled": True},
        "ws": {"enabled": True},
        "wss": {"enabled": True},
    },
    "tls": {
        "certManager": {"enabled": True, "issuerRef": {"name": "ca-issuer"}, "dnsNames": ["mqtt.example.com"]},
        "requireClientCertificate": True,
        "useIdentityAsUsername": True,
    },
    "auth": {"existingSecret": "ferromq-auth"},
    "http": {"token": {"value": "s3cret-token"}},
    "persistence": {"storageClass": "fast", "durability": "periodic"},
    "podAntiAffinity": "hard",
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["mqtt"]}]}]
        }
    },
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mqtt", "effect": "NoSchedule"}],
    "priorityClassName": "high",
    "podAnnotations": {"example.com/team": "iot"},
    "podLabels": {"team": "iot"},
    "extraEnv": [{"name": "FERROMQ_LIMITS_MAX_CONNECTIONS", "value": "100000"}],
    "extraConfig": "[sys]\ninterval = \"30s\"",
    "service": {
        "type": "LoadBalancer",
        "annotations": {"example.com/lb": "nlb"},
        "nodePorts": {"mqtt": 31883},
        "externalTrafficPolicy": "Local",
        "loadBalancerSourceRanges": ["10.0.0.0/8"],
        "exposeHttp": True,
    },
    "serviceAccount": {"annotations": {"example.com/role": "ferromq"}},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    },
}


def errors(messages):
    return [m for m in messages if m[0] == "ERROR"]


def test_default_values_lint_clean(lint_chart, capfd):
    msgs = lint_chart()
    assert "fail message=" not in capfd.readouterr().err
    assert errors(msgs) == [], msgs
    # The only remark Helm has is the INFO "icon is recommended".
    assert all(sev == "INFO" for sev, _ in msgs), msgs


def test_every_optional_feature_lints_clean(lint_chart, capfd):
    msgs = lint_chart(ALL_ON)
    assert "fail message=" not in capfd.readouterr().err
    assert errors(msgs) == [], msgs


def test_single_node_without_cluster_lints_clean(lint_chart, capfd):
    msgs = lint_chart({"replicaCount": 1, "cluster": {"enabled": False}, "persistence": {"enabled": False}})
    assert "fail message=" not in capfd.readouterr().err
    assert errors(msgs) == [], msgs


def test_inline_tls_secret_and_existing_cluster_secret_lint_clean(lint_chart):
    msgs = lint_chart(
        {
            "listeners": {"mqtts": {"enabled": True}},
            "tls": {"cert": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n", "key": "k"},
            "cluster": {"tls": {"enabled": True, "existingSecret": "peer-certs"}},
            "http": {"token": {"existingSecret": "admin-token"}},
        }
    )
    assert errors(msgs) == [], msgs


@pytest.mark.parametrize(
    "bad",
    [
        {"replicaCount": "three"},
        {"service": {"type": "Ingress"}},
        {"listeners": {"mqtt": {"port": 70000}}},
        {"persistence": {"durability": "sometimes"}},
        {"podDisruptionBudget": {"enabled": "yes"}},
        {"replicaCount": 3, "unknownKey": 1},
    ],
    ids=["replicaCount-string", "service-type", "port-range", "durability-enum", "bool-as-string", "unknown-key"],
)
def test_values_schema_rejects_wrong_values(lint_chart, bad):
    msgs = lint_chart(bad)
    assert ("ERROR", "values.yaml") in msgs, msgs
    # The same verdict from the schema alone, which says why.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_merged(values, bad), schema)


def _merged(values, over):
    return deep_merge(values, over)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"cluster": {"enabled": False}}, "replicaCount > 1 needs cluster.enabled=true"),
        ({"listeners": {"mqtts": {"enabled": True}}}, "listeners.mqtts / listeners.wss need tls"),
        ({"cluster": {"tls": {"enabled": True}}}, "cluster.tls.enabled needs cluster.tls.existingSecret"),
        ({"resources": {"limits": {"memory": "1.5Gi"}}}, 'resources.limits.memory \\"1.5Gi\\"'),
    ],
    ids=["replicas-without-cluster", "mqtts-without-cert", "mtls-without-cert", "fractional-memory"],
)
def test_template_checks_refuse_inconsistent_values(lint_chart, capfd, bad, message):
    # Helm's lint mode turns `fail` into a logged message instead of an error (so a
    # chart with required values still lints); `helm install` and `helm template`
    # stop on it. The library logs it to stderr, which is what is checked here.
    lint_chart(bad)
    err = capfd.readouterr().err
    assert "fail message=" in err and message in err, err


def test_chart_copies_of_dashboard_and_alerts_are_identical():
    # Helm cannot read outside the chart directory, so the chart carries copies.
    pairs = [
        (REPO / "deploy/grafana/ferromq.json", CHART / "files/ferromq.json"),
        (REPO / "deploy/prometheus/alerts.yml", CHART / "files/alerts.yml"),
    ]
    for original, copy in pairs:
        assert copy.read_bytes() == original.read_bytes(), (
            f"{copy} differs from {original}: cp {original.relative_to(REPO)} {copy.relative_to(REPO)}"
        )


def test_default_values_match_schema_and_comments_state_bootstrap_rule():
    values_text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(values_text), schema)
    for phrase in ["bootstrap = \"auto\"", "bootstrap = \"never\"", "data directory is empty"]:
        assert phrase in values_text
