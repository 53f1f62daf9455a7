"""Observability and operations: /metrics, /healthz, /readyz, the admin API,
`ferromq ctl`, the Grafana dashboard and the Prometheus alert rules.

Tools: `promtool` and `prometheus` from the Debian package `prometheus`
(scripts/test-all installs it). Every broker here gets its HTTP listener on an
ephemeral loopback port (conftest passes `--http-listen 127.0.0.1:0`) and the tests
read it from the ready file's `{"protocol":"http"}` entry.

"Beyond loopback" (the admin API's token check) is tested two ways, both honest:
`http.trust_loopback = false` makes the broker treat loopback peers like remote
ones (always run), and, when this host has a non-loopback IPv4 address, a request
to that address from this host arrives with that address as its peer (the kernel
delivers it locally: no packet leaves the machine), which the broker must refuse
without a token.

Not run against Mosquitto (`FERROMQ_TEST_BROKER=mosquitto`): it has no HTTP side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from clusterutil import start_cluster
from conftest import http_url, wait_for
from mqttclient import QUIET_WINDOW, Client, unique
from obs import (ALERTS, DASHBOARD, Prometheus, alert_exprs, ctl, dashboard_exprs, http, instantiate,
                 metric_names_in, samples, scrape, wait_value)

pytestmark = pytest.mark.skipif(os.environ.get("FERROMQ_TEST_BROKER", "ferromq") != "ferromq",
                                reason="ferromq's own HTTP endpoints")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"`{tool}` not found: install the Debian package `prometheus` (scripts/test-all does)")
    return path


# ---------------------------------------------------------------- health


def test_healthz_and_readyz(broker):
    base = http_url(broker)
    r = http(base + "/healthz")
    assert (r.status, r.text) == (200, "ok\n")
    r = http(base + "/readyz")
    assert r.status == 200
    assert r.json() == {"ready": True, "checks": {"listeners": "ok", "store": "ok", "shutdown": "ok"}}
    assert http(base + "/nope").status == 404


def test_ready_file_lists_the_http_listener(broker):
    http_entries = [l for l in broker.listeners if l["protocol"] == "http"]
    assert len(http_entries) == 1 and http_entries[0]["name"] == "http"
    assert http_entries[0]["addr"].startswith("127.0.0.1:") and not http_entries[0]["addr"].endswith(":0")


# ---------------------------------------------------------------- metrics


def test_promtool_check_metrics_reports_nothing(broker):
    """`promtool check metrics` lints names, types, units and help texts: no output."""
    promtool = need("promtool")
    sub = Client(broker, protocol=5)
    sub.connect()
    sub.subscribe("lint/#", qos=2)
    pub = Client(broker, protocol=4)
    pub.connect()
    for qos in (0, 1, 2):
        pub.publish(f"lint/{qos}", b"x" * 10, qos=qos, retain=qos == 1)
    wait_for(lambda: len(sub.messages) >= 3, 10, what="3 deliveries")
    text = scrape(broker)
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr
    # Naming rules the linter does not cover: prefix, no unbounded labels.
    names = {l.split("{")[0].split(" ")[0] for l in text.splitlines() if l and not l.startswith("#")}
    assert all(n.startswith(("ferromq_", "process_")) for n in names), names
    for line in text.splitlines():
        assert "client_id=" not in line and "topic=" not in line, line


def test_counters_move_by_qos(broker_factory):
    """Known numbers of messages per QoS move the counters by exactly that much."""
    b = broker_factory("max_queued_messages 5\nsys_interval 0\n")  # no $SYS retained messages
    before = samples(b)
    sub = Client(b, protocol=5)
    sub.connect()
    sub.subscribe("count/#", qos=2)
    pub = Client(b, protocol=4)
    pub.connect()
    sizes = {0: 3, 1: 4, 2: 5}    # messages per QoS
    payload = {0: b"a" * 10, 1: b"b" * 20, 2: b"c" * 30}
    for qos, n in sizes.items():
        for i in range(n):
            pub.publish(f"count/{qos}/{i}", payload[qos], qos=qos)
    wait_for(lambda: len(sub.messages) >= 12, 10, what="12 deliveries")
    pub.publish("nobody/listens", b"z", qos=1)
    pub.publish("nobody/listens", b"z", qos=0)

    # An offline persistent session with a QoS 1 subscription and a queue of 5 gets 8.
    slow = Client(b, protocol=5, clean=False, session_expiry=300)
    slow.connect()
    slow.subscribe("slow/#", qos=1)
    slow.disconnect()
    for i in range(8):
        pub.publish(f"slow/{i}", b"q", qos=1)

    def after():
        return samples(b)

    s = wait_for(lambda: (lambda x: x if x.total("ferromq_messages_queued") == 5 else None)(after()), 10,
                 what="5 queued deliveries")

    def delta(name, **labels):
        return s.total(name, **labels) - before.total(name, **labels)

    for qos, n in sizes.items():
        extra = {0: 1, 1: 1 + 8, 2: 0}[qos]  # nobody/listens and slow/*
        assert delta("ferromq_messages_received_total", qos=qos) == n + extra, qos
        assert delta("ferromq_messages_received_bytes_total", qos=qos) == n * len(payload[qos]) + extra, qos
        assert delta("ferromq_messages_sent_total", qos=qos) == n, qos
        assert delta("ferromq_messages_sent_bytes_total", qos=qos) == n * len(payload[qos]), qos
    assert delta("ferromq_delivery_latency_seconds_count") == 12
    assert delta("ferromq_messages_dropped_total", reason="no_subscribers") == 2
    assert delta("ferromq_messages_dropped_total", reason="queue_full") == 3
    assert s.get_value("ferromq_messages_queued") == 5
    assert s.get_value("ferromq_sessions", state="online") == 2
    assert s.get_value("ferromq_sessions", state="offline") == 1
    assert s.get_value("ferromq_subscriptions") == 2
    assert s.get_value("ferromq_shared_subscriptions") == 0
    assert s.get_value("ferromq_connections", listener="listener-1", protocol="5.0") == 1
    assert s.get_value("ferromq_connections", listener="listener-1", protocol="3.1.1") == 1
    assert delta("ferromq_connects_total") == 3
    assert delta("ferromq_disconnects_total", reason="client_disconnect") == 1
    assert s.get_value("ferromq_ready") == 1
    assert s.get_value("process_resident_memory_bytes") > 0
    assert s.get_value("process_open_fds") > 0

    pub.publish("keep/this", b"12345", qos=0, retain=True)
    sub.close_abruptly()
    s2 = wait_for(lambda: (lambda x: x if x.get_value("ferromq_retained_messages") == 1
                           and x.total("ferromq_disconnects_total", reason="network") == 1 else None)(samples(b)),
                  10, what="retained message and a network disconnect counted")
    assert s2.get_value("ferromq_retained_bytes") >= len("keep/this") + 5
    assert s2.get_value("ferromq_connections", listener="listener-1", protocol="5.0") == 0


def test_auth_failures_are_counted(broker_factory):
    b = broker_factory("allow_anonymous false\n")
    for i in range(3):
        c = Client(b, protocol=5)
        ack = c.connect(check=False)
        assert ack.reason_code == 0x87  # Not authorized
    s = samples(b)
    assert s.get_value("ferromq_auth_failures_total") == 3
    assert s.get_value("ferromq_connects_total") == 0


# ---------------------------------------------------------------- admin API and ctl


def test_admin_api_and_ctl(broker):
    a = Client(broker, client_id=unique("adm-a"), protocol=5)
    a.connect()
    a.subscribe("sensors/+", qos=1)
    a.subscribe("$share/grp/jobs/#", qos=2)
    b4 = Client(broker, client_id=unique("adm-b"), protocol=4)
    b4.connect()

    # list
    r = ctl(broker, "--json", "clients")
    assert r.returncode == 0, r.stderr
    listed = {c["client_id"]: c for c in json.loads(r.stdout)["clients"]}
    assert set(listed) >= {a.client_id, b4.client_id}
    ca = listed[a.client_id]
    assert ca["connected"] and ca["protocol"] == "5.0" and ca["address"].startswith("127.0.0.1:")
    assert ca["subscriptions"] == 2 and ca["listener"] == "listener-1"
    assert ca["connected_since"].endswith("Z")
    assert listed[b4.client_id]["protocol"] == "3.1.1"
    r = ctl(broker, "clients")
    assert r.returncode == 0 and a.client_id in r.stdout and "CLIENT ID" in r.stdout, r
    r = ctl(broker, "client", "show", a.client_id)
    assert r.returncode == 0 and "sensors/+" in r.stdout and "grp" in r.stdout, r.stdout
    r = ctl(broker, "--json", "subscriptions")
    subs = json.loads(r.stdout)["subscriptions"]
    assert {(s["client_id"], s["filter"], s["share_group"], s["qos"]) for s in subs} == {
        (a.client_id, "sensors/+", None, 1), (a.client_id, "jobs/#", "grp", 2)}
    r = ctl(broker, "status")
    assert r.returncode == 0 and "2 connected" in r.stdout and "ready" in r.stdout, r.stdout
    status = json.loads(ctl(broker, "--json", "status").stdout)
    assert status["subscriptions"] == 1 and status["shared_subscriptions"] == 1

    # kick: a v5 client gets DISCONNECT 0x98 (Administrative action), a 3.1.1 one is closed
    r = ctl(broker, "client", "kick", a.client_id)
    assert r.returncode == 0 and f"kicked {a.client_id}" in r.stdout, r
    d = a.wait_disconnect()
    assert d.reason_code == 0x98 and d.from_server, d
    r = ctl(broker, "client", "kick", b4.client_id)
    assert r.returncode == 0, r
    b4.wait_disconnect()
    wait_for(lambda: samples(broker).get_value("ferromq_disconnects_total", reason="administrative") == 2, 10,
             what="two administrative disconnects counted")
    r = ctl(broker, "client", "kick", "no-such-client")
    assert r.returncode == 1 and "no session" in r.stderr, r
    assert http(http_url(broker) + "/api/v1/clients/no-such-client").status == 404

    # retained get / delete
    pub = Client(broker, protocol=5)
    pub.connect()
    pub.publish("rt/keep", "21.5 °C", qos=1, retain=True)
    pub.publish("rt/drop", b"\x00\xffbinary", qos=0, retain=True)
    wait_for(lambda: ctl(broker, "retained", "get", "rt/drop").returncode == 0, 10, what="retained stored")
    r = ctl(broker, "retained", "get", "rt/keep")
    assert r.returncode == 0 and "21.5 °C" in r.stdout and "qos      1" in r.stdout, r.stdout
    got = json.loads(ctl(broker, "--json", "retained", "get", "rt/drop").stdout)
    assert got["payload"] is None and got["payload_base64"] == "AP9iaW5hcnk=" and got["payload_size"] == 8
    listing = json.loads(ctl(broker, "--json", "retained", "list", "rt/#").stdout)
    assert sorted(m["topic"] for m in listing["retained"]) == ["rt/drop", "rt/keep"]

    watcher = Client(broker, protocol=5)
    watcher.connect()
    watcher.subscribe("rt/#", qos=1, retain_handling=2)  # live messages only
    r = ctl(broker, "retained", "delete", "rt/drop")
    assert r.returncode == 0 and "deleted" in r.stdout, r
    assert ctl(broker, "retained", "get", "rt/drop").returncode == 1
    assert ctl(broker, "retained", "delete", "rt/drop").returncode == 1
    # A new subscriber gets only what is still retained; the delete published nothing.
    late = Client(broker, protocol=5)
    late.connect()
    late.subscribe("rt/#", qos=1)
    wait_for(lambda: late.messages, 10, what="retained message on subscribe")
    pub.publish("rt/barrier", b"b", qos=1)  # ordered after anything the delete could have sent
    wait_for(lambda: any(m.topic == "rt/barrier" for m in watcher.messages), 10, what="barrier")
    assert [m.topic for m in watcher.messages] == ["rt/barrier"]
    wait_for(lambda: any(m.topic == "rt/barrier" for m in late.messages), 10, what="barrier")
    assert sorted(m.topic for m in late.messages) == ["rt/barrier", "rt/keep"]
    listing = json.loads(ctl(broker, "--json", "retained", "list", "rt/#").stdout)
    assert [m["topic"] for m in listing["retained"]] == ["rt/keep"]


def test_admin_api_token_when_loopback_is_not_trusted(broker_factory, monkeypatch):
    monkeypatch.setenv("FERROMQ_HTTP_TRUST_LOOPBACK", "false")
    monkeypatch.setenv("FERROMQ_HTTP_TOKEN", "s3cret-token")
    b = broker_factory()
    base = http_url(b)
    assert http(base + "/api/v1/clients").status == 401
    r = http(base + "/api/v1/clients", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401 and r.headers.get("www-authenticate", "").startswith("Bearer"), r
    assert http(base + "/api/v1/clients", headers={"Authorization": "Bearer s3cret-token"}).status == 200
    for open_path in ("/metrics", "/healthz", "/readyz"):
        assert http(base + open_path).status == 200, open_path
    monkeypatch.delenv("FERROMQ_HTTP_TOKEN")
    r = ctl(b, "status")
    assert r.returncode == 1 and "401" in r.stderr, r
    r = ctl(b, "status", token="s3cret-token")
    assert r.returncode == 0 and "ready" in r.stdout, r
    assert "admin API request refused" in b.log()


def test_admin_api_refused_without_token(broker_factory, monkeypatch):
    monkeypatch.setenv("FERROMQ_HTTP_TRUST_LOOPBACK", "false")
    b = broker_factory()
    base = http_url(b)
    r = http(base + "/api/v1/broker", headers={"Authorization": "Bearer anything"})
    assert r.status == 403 and "loopback" in r.json()["error"], r
    assert http(base + "/api/v1/retained?topic=a", method="DELETE").status == 403
    assert http(base + "/metrics").status == 200


# ---------------------------------------------------------------- logs


def test_connect_and_disconnect_log_lines_without_secrets(broker_factory):
    b = broker_factory(args=["--log-format", "json"])
    c = Client(b, client_id="logged-client", protocol=5)
    c.connect()
    c.subscribe("log/#", qos=0)
    c.publish("log/t", b"payload-secret-xyz", qos=1)
    wait_for(lambda: c.messages, 10, what="own message")
    c.disconnect()
    # A second client with credentials: they must not be logged either.
    import paho.mqtt.client as paho
    p = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="cred-client", protocol=paho.MQTTv311)
    p.username_pw_set("user-x", "hunter2-password")
    p.connect(b.host, b.port)
    p.loop_start()
    wait_for(lambda: p.is_connected(), 10, what="credentialed connect")
    p.disconnect()
    p.loop_stop()

    def events():
        out = []
        for line in b.log().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def find(msg, cid):
        return [e for e in events() if e.get("fields", {}).get("message") == msg
                and e["fields"].get("client_id") == cid]

    wait_for(lambda: find("client disconnected", "cred-client"), 10, what="disconnect line")
    conn = find("client connected", "logged-client")[0]["fields"]
    assert conn["addr"].startswith("127.0.0.1:") and conn["protocol"] == "V5"
    disc = find("client disconnected", "logged-client")[0]["fields"]
    assert disc["reason"] == "disconnect" and disc["addr"].startswith("127.0.0.1:")
    log = b.log()
    assert "payload-secret-xyz" not in log and "hunter2-password" not in log


# ---------------------------------------------------------------- dashboard, alerts, Prometheus


def test_alert_rules_pass_promtool():
    promtool = need("promtool")
    out = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 10 rules found" in out.stdout, out.stdout
    cfg = ALERTS.parent / "prometheus.yml"
    out = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    names = {r for r in ("FerromqDown", "FerromqNotReady", "FerromqHighDropRate", "FerromqAuthFailureBurst",
                         "FerromqQueueGrowth", "FerromqDiskFilling", "FerromqDeliveryLatencyHigh")}
    assert all(n in ALERTS.read_text() for n in names)


def test_dashboard_and_alert_metrics_exist_in_a_live_scrape(broker):
    """Every metric name in the dashboard's queries and the alert rules is exported.
    `up` is the one exception: Prometheus records it for every target itself."""
    dash = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    for want in ("Overview", "Traffic", "Drops", "Latency", "Sessions", "Storage", "Cluster"):
        assert any(r.startswith(want) for r in rows), (want, rows)
    live = samples(broker).names()
    # The cluster's families exist on cluster nodes only, and its per-peer ones once
    # a node has a peer: a two-node cluster exports them all.
    started = []
    try:
        for n in start_cluster(2, started):
            live |= samples(n).names()
    finally:
        for n in started:
            n.stop()
            shutil.rmtree(n.workdir, ignore_errors=True)
    used = {}
    for source, exprs in (("dashboard", dashboard_exprs()), ("alerts", alert_exprs())):
        assert exprs, source
        for e in exprs:
            for n in metric_names_in(e):
                used.setdefault(n, set()).add(source)
    missing = {n: s for n, s in used.items() if n not in live and n != "up"}
    assert not missing, f"metrics used but not exported: {missing}"
    assert len(used) >= 20, sorted(used)


def test_prometheus_scrapes_ferromq(broker):
    """A real Prometheus scrapes the broker while clients connect and publish; PromQL
    through its HTTP API sees the connection count and message counts; the alert
    rules load and evaluate, and every dashboard query is valid PromQL."""
    need("prometheus")
    target = http_url(broker).removeprefix("http://")
    prom = Prometheus([target], rule_files=[ALERTS])
    try:
        clients = [Client(broker, protocol=p) for p in (5, 5, 4)]
        for c in clients:
            c.connect()
        clients[0].subscribe("prom/#", qos=1)
        for i in range(7):
            clients[1].publish(f"prom/q1/{i}", b"m", qos=1)
        for i in range(5):
            clients[2].publish(f"prom/q0/{i}", b"m", qos=0)
        wait_for(lambda: len(clients[0].messages) == 12, 10, what="12 deliveries")

        results = {}
        queries = {
            'up{job="ferromq"}': 1,
            'ferromq_ready{job="ferromq"}': 1,
            'sum(ferromq_connections{job="ferromq"})': 3,
            'ferromq_connections{job="ferromq",protocol="5.0"}': 2,
            'ferromq_connections{job="ferromq",protocol="3.1.1"}': 1,
            'sum(ferromq_messages_received_total{job="ferromq"})': 12,
            'ferromq_messages_received_total{job="ferromq",qos="1"}': 7,
            'ferromq_messages_received_total{job="ferromq",qos="0"}': 5,
            'sum(ferromq_messages_sent_total{job="ferromq"})': 12,
            'ferromq_delivery_latency_seconds_count{job="ferromq"}': 12,
        }
        for q, want in queries.items():
            results[q] = wait_value(lambda q=q: prom.scalar(q), want, 60, what=q)
        results["sessions online"] = prom.scalar('ferromq_sessions{job="ferromq",state="online"}')
        results["delivery latency p99 since start (s)"] = prom.scalar(
            'histogram_quantile(0.99, sum by (le) (ferromq_delivery_latency_seconds_bucket{job="ferromq"}))')
        print("\nPrometheus query results:")
        for q, v in results.items():
            print(f"  {q} = {v}")

        # The alert rules load and evaluate without errors; none fires on a healthy broker.
        def rules_evaluated():
            groups = http(prom.url + "/api/v1/rules").json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            evaluated = all(r["health"] == "ok" and not r.get("lastEvaluation", "").startswith("0001")
                            for r in rules)
            return rules if len(rules) == 10 and evaluated else None

        rules = wait_for(rules_evaluated, 30, interval=0.5, what="10 alert rules evaluated with health ok")
        firing = [r["name"] for r in rules if r["state"] == "firing"]
        assert not firing, firing
        # Every dashboard query is valid PromQL that Prometheus accepts.
        for e in dashboard_exprs():
            prom.query(instantiate(e))
    except BaseException:
        print(prom.log()[-4000:])
        raise
    finally:
        prom.stop()
