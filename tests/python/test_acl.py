"""Authorisation with a Mosquitto `acl_file`: publish (v5 PUBACK/PUBREC 0x87, 3.1.1
acknowledged and dropped, as Mosquitto does), subscribe (SUBACK 0x80, or 0x87 with
`auth.acl_subscribe_failure_code`), delivery of live and retained messages checked for
`read`, `%u` / `%c` patterns, anonymous rules, wills, and SIGHUP reload.

These test ferromq's documented behaviour; they are not meant to pass against
Mosquitto (FERROMQ_TEST_BROKER=mosquitto): its acl_file never refuses a SUBSCRIBE (it
only filters deliveries), and as root it drops privileges and cannot read files in
pytest's private temporary directories.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conftest import wait_for
from mqttclient import (CONNACK, PUBACK, PUBLISH, PUBREC, RawClient, barrier, both_protocols, connect, quiet,
                        unique)

ACL = """\
# Before the first `user`: anonymous clients.
topic read public/#
topic readwrite anon/#

user admin
topic readwrite #

user alice
topic readwrite home/alice/#
topic deny home/alice/private/#
topic read shared/#

user bob
topic read home/alice/#
topic write shared/#

# Everyone: their own users/<name>/ tree, their device's topics.
pattern readwrite users/%u/#
pattern write devices/%c/telemetry
pattern read devices/%c/commands
"""

NOT_AUTHORIZED = 0x87
SUBACK_FAILURE = 0x80


@pytest.fixture
def acl_broker(broker_factory, tmp_path):
    def start(acl: str = ACL, env: dict | None = None):
        path = tmp_path / "acl"
        path.write_text(acl)
        path.chmod(0o644)
        broker = broker_factory(f"acl_file {path}\n", env=env)
        broker.acl_path = path
        return broker
    return start


def raw(broker, protocol, username=None, client_id=None):
    c = RawClient(broker, protocol)
    c.connect(client_id or unique("raw"), username=username)
    return c


@both_protocols
def test_publish_denied(acl_broker, proto):
    """bob may not write home/alice/x: v5 gets PUBACK / PUBREC 0x87 (Not authorized), 3.1.1
    a normal acknowledgement; either way nobody receives it. Allowed topics still flow."""
    broker = acl_broker()
    alice = connect(broker, username="alice", protocol=5)
    alice.subscribe("home/alice/#", 1)
    bob = raw(broker, proto, username="bob")
    pid = bob.publish("home/alice/x", b"forged", qos=1)
    ack = bob.expect(PUBACK, where=lambda p: p.packet_id == pid)
    assert ack.reason_code == (NOT_AUTHORIZED if proto == 5 else 0)
    pid = bob.publish("home/alice/y", b"forged2", qos=2)
    rec = bob.expect(PUBREC, where=lambda p: p.packet_id == pid)
    assert rec.reason_code == (NOT_AUTHORIZED if proto == 5 else 0)
    # An allowed publish from alice arrives; the forged ones never do.
    pub = connect(broker, username="alice", protocol=proto)
    pub.publish("home/alice/z", b"real", qos=1)
    assert alice.wait_message("home/alice/z").payload == b"real"
    quiet()
    assert [m.topic for m in alice.received()] == ["home/alice/z"]


def test_deny_rules_win(acl_broker):
    """alice may write home/alice/# except home/alice/private/#: deny wins."""
    broker = acl_broker()
    bob = connect(broker, username="bob")
    bob.subscribe("home/alice/#", 1)
    alice = raw(broker, 5, username="alice")
    pid = alice.publish("home/alice/private/diary", b"secret", qos=1)
    assert alice.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == NOT_AUTHORIZED
    pid = alice.publish("home/alice/kitchen", b"21.5", qos=1)
    assert alice.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == 0
    assert bob.wait_message("home/alice/kitchen").payload == b"21.5"
    quiet()
    assert [m.topic for m in bob.received()] == ["home/alice/kitchen"]


@both_protocols
def test_subscribe_denied(acl_broker, proto):
    """A filter no read rule can match gets SUBACK 0x80 (both versions, the default);
    others in the same SUBSCRIBE are granted."""
    broker = acl_broker()
    bob = connect(broker, username="bob", protocol=proto)
    codes = bob.subscribe([("home/carol/#", 1), ("home/alice/+", 1), ("shared/x", 0)])
    assert codes == [SUBACK_FAILURE, 1, SUBACK_FAILURE]


def test_subscribe_failure_code_087(acl_broker):
    """auth.acl_subscribe_failure_code = 0x87: v5 gets Not authorized; 3.1.1 still 0x80."""
    broker = acl_broker(env={"FERROMQ_AUTH_ACL_SUBSCRIBE_FAILURE_CODE": "0x87"})
    assert connect(broker, username="bob", protocol=5).subscribe("home/carol/#", 1) == [NOT_AUTHORIZED]
    assert connect(broker, username="bob", protocol=4).subscribe("home/carol/#", 1) == [SUBACK_FAILURE]


def test_live_delivery_checks_read(acl_broker):
    """A wildcard subscription is granted when some of its topics are readable; each
    message is then checked for read on delivery (as Mosquitto does)."""
    broker = acl_broker()
    bob = connect(broker, username="bob")
    assert bob.subscribe("users/#", 1) == [1], "users/bob/# is readable"
    admin = connect(broker, username="admin")
    admin.publish("users/alice/mail", b"for alice", qos=1)
    admin.publish("users/bob/mail", b"for bob", qos=1)
    assert bob.wait_message("users/bob/mail").payload == b"for bob"
    barrier(admin, connect(broker, username="admin"))
    quiet()
    assert [m.topic for m in bob.received()] == ["users/bob/mail"]


@both_protocols
def test_retained_delivery_checks_read(acl_broker, proto):
    """Retained messages sent on SUBSCRIBE are filtered by read access, topic by topic."""
    broker = acl_broker()
    admin = connect(broker, username="admin")
    for topic in ["public/news", "home/alice/kitchen", "home/alice/private/diary", "users/alice/status",
                  "users/bob/status"]:
        admin.publish(topic, topic.encode(), qos=1, retain=True)

    anon = connect(broker, protocol=proto)
    assert anon.subscribe("#", 1) == [1]
    alice = connect(broker, username="alice", protocol=proto)
    alice.subscribe("#", 1)
    bob = connect(broker, username="bob", protocol=proto)
    bob.subscribe([("home/#", 1), ("users/+/status", 1)])

    assert anon.wait_message("public/news").retain
    alice.wait_messages(2)
    bob.wait_messages(3)
    barrier(admin, connect(broker, username="admin"))
    quiet()
    assert sorted(m.topic for m in anon.received()) == ["public/news"]
    # `topic deny` denies reading too: alice does not see her private tree.
    assert sorted(m.topic for m in alice.received()) == ["home/alice/kitchen", "users/alice/status"]
    assert sorted(m.topic for m in bob.received()) == [
        "home/alice/kitchen", "home/alice/private/diary", "users/bob/status"]


def test_patterns_with_username_and_client_id(acl_broker):
    """`pattern ... users/%u/#` gives each user their own tree; `devices/%c/...` each
    client id its own topics, also to anonymous clients; a %u pattern never applies to
    a client without a username."""
    broker = acl_broker()
    admin = connect(broker, username="admin")
    admin.subscribe("#", 1)

    dev = raw(broker, 5, client_id="dev42")
    ok = dev.publish("devices/dev42/telemetry", b"t", qos=1)
    assert dev.expect(PUBACK, where=lambda p: p.packet_id == ok).reason_code == 0
    bad = dev.publish("devices/dev43/telemetry", b"t", qos=1)
    assert dev.expect(PUBACK, where=lambda p: p.packet_id == bad).reason_code == NOT_AUTHORIZED
    anon_users = dev.publish("users//x", b"t", qos=1)
    assert dev.expect(PUBACK, where=lambda p: p.packet_id == anon_users).reason_code == NOT_AUTHORIZED
    assert dev.subscribe("devices/dev42/commands", 1) == [1]
    assert dev.subscribe("devices/dev43/commands", 1) == [SUBACK_FAILURE]
    assert dev.subscribe("devices/+/commands", 1) == [1]
    admin.publish("devices/dev43/commands", b"not yours", qos=1)
    admin.publish("devices/dev42/commands", b"reboot", qos=1)
    got = dev.expect(PUBLISH)
    assert (got.topic, got.payload) == ("devices/dev42/commands", b"reboot")
    assert [p for p in dev.collect(0.5) if p.type == PUBLISH] == [], "dev43's command is not delivered"

    carol = raw(broker, 5, username="carol")  # no `user carol` block: patterns only
    ok = carol.publish("users/carol/notes", b"mine", qos=1)
    assert carol.expect(PUBACK, where=lambda p: p.packet_id == ok).reason_code == 0
    bad = carol.publish("users/alice/notes", b"hers", qos=1)
    assert carol.expect(PUBACK, where=lambda p: p.packet_id == bad).reason_code == NOT_AUTHORIZED
    admin.wait_message("users/carol/notes")
    # A client id with a wildcard could widen a pattern: refused outright.
    sneaky = raw(broker, 5, client_id="#")
    bad = sneaky.publish("devices/a/telemetry", b"x", qos=1)
    assert sneaky.expect(PUBACK, where=lambda p: p.packet_id == bad).reason_code == NOT_AUTHORIZED


def test_will_topic_needs_write_access(acl_broker):
    """A will on a topic the client may not write is refused at CONNECT (0x87), not
    dropped silently when the client dies."""
    broker = acl_broker()
    c = RawClient(broker, 5)
    ack = c.connect("dev7", will={"topic": "devices/dev8/telemetry", "payload": b"gone"}, check=False)
    assert ack.reason_code == NOT_AUTHORIZED
    c = RawClient(broker, 5)
    assert c.connect("dev7", will={"topic": "devices/dev7/telemetry", "payload": b"gone"}).reason_code == 0


def test_sighup_reloads_acl(acl_broker):
    """SIGHUP re-reads the ACL file; a broken file keeps the previous rules in force."""
    broker = acl_broker()
    bob = connect(broker, username="bob")
    assert bob.subscribe("home/carol/#", 1) == [SUBACK_FAILURE]
    broker.acl_path.write_text(ACL + "\nuser bob\ntopic read home/carol/#\n")
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: bob.subscribe("home/carol/#", 1) == [1], what="the new rule")

    broker.acl_path.write_text("topic sideways\nnonsense here\n")
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the previous acl_file content" in broker.log(), what="the reload error")
    assert "line 2" in broker.log()
    assert bob.subscribe("home/alice/#", 1) == [1], "previous rules still apply"


def test_no_acl_file_allows_everything(broker):
    """Without acl_file nothing is checked (and nothing costs a lookup)."""
    c = connect(broker)
    assert c.subscribe("$SYS/#", 0) == [0]
    c.subscribe("any/#", 1)
    c.publish("any/thing", b"x", qos=1)
    c.wait_message("any/thing")
