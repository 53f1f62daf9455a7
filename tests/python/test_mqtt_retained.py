"""Retained messages: storing, replacing, clearing, the RETAIN flag on delivery, and the
v5 subscription options Retain As Published and Retain Handling.

Spec numbering differs between versions, so both are cited: 3.1.1 [MQTT-3.3.1-5..12],
5.0 [MQTT-3.3.1-5..13].

All pass against Mosquitto 2.0.11.
"""

import pytest

from mqttclient import barrier, both_protocols, connect, quiet, unique


def _retain(broker, proto, topic, payload, qos=1):
    p = connect(broker, protocol=proto)
    p.publish(topic, payload, qos=qos, retain=True)
    return p


@both_protocols
def test_retained_message_delivered_on_subscribe(broker, proto):
    """A RETAIN=1 PUBLISH is stored [MQTT-3.3.1-5] and sent to new subscribers with
    RETAIN=1 [MQTT-3.3.1-6] [MQTT-3.3.1-8] (3.1.1) / [MQTT-3.3.1-9] (5.0), at
    min(stored QoS, subscription QoS)."""
    topic = unique("ret")
    _retain(broker, proto, topic, b"state", qos=2)
    s = connect(broker, protocol=proto)
    s.subscribe(topic, 1)
    m = s.wait_message(topic)
    assert (m.payload, m.retain, m.qos) == (b"state", True, 1)


@both_protocols
def test_retained_message_replaced_and_matched_by_wildcard(broker, proto):
    """A newer retained message replaces the old one [MQTT-3.3.1-5]; a wildcard
    subscription receives every matching retained message."""
    base = unique("ret")
    p = _retain(broker, proto, f"{base}/a", b"a1")
    p.publish(f"{base}/a", b"a2", qos=1, retain=True)
    p.publish(f"{base}/b", b"b1", qos=1, retain=True)
    s = connect(broker, protocol=proto)
    s.subscribe(f"{base}/#", 1)
    got = {m.topic: m.payload for m in s.wait_messages(2)}
    assert got == {f"{base}/a": b"a2", f"{base}/b": b"b1"}
    barrier(p, s)
    quiet()
    assert len(s.received(f"{base}/a")) == 1


@both_protocols
def test_empty_payload_clears_retained(broker, proto):
    """A zero-byte retained PUBLISH removes the retained message and is not itself stored
    [MQTT-3.3.1-10] [MQTT-3.3.1-11] (3.1.1) / [MQTT-3.3.1-6] [MQTT-3.3.1-7] (5.0); it is
    still forwarded to current subscribers."""
    topic = unique("ret")
    p = _retain(broker, proto, topic, b"old")
    live = connect(broker, protocol=proto)
    live.subscribe(topic, 1)
    assert live.wait_message(topic).payload == b"old"
    p.publish(topic, b"", qos=1, retain=True)
    cleared = live.wait_messages(2, topic=topic)[1]
    assert cleared.payload == b""
    s = connect(broker, protocol=proto)
    s.subscribe(topic, 1)
    barrier(p, s)
    quiet()
    assert s.received(topic) == []


@both_protocols
def test_non_retained_publish_keeps_retained(broker, proto):
    """A RETAIN=0 PUBLISH neither stores nor replaces the retained message
    [MQTT-3.3.1-12] (3.1.1) / [MQTT-3.3.1-8] (5.0)."""
    topic = unique("ret")
    p = _retain(broker, proto, topic, b"kept")
    p.publish(topic, b"transient", qos=1, retain=False)
    s = connect(broker, protocol=proto)
    s.subscribe(topic, 1)
    m = s.wait_message(topic)
    assert (m.payload, m.retain) == (b"kept", True)
    barrier(p, s)
    quiet()
    assert [m.payload for m in s.received(topic)] == [b"kept"]


@both_protocols
def test_live_message_to_existing_subscriber_has_retain_0(broker, proto):
    """A retained PUBLISH forwarded to an established subscription has RETAIN=0
    [MQTT-3.3.1-9] (3.1.1) / [MQTT-3.3.1-12] (5.0, Retain As Published=0)."""
    topic = unique("ret")
    s = connect(broker, protocol=proto)
    s.subscribe(topic, 1)
    p = connect(broker, protocol=proto)
    p.publish(topic, b"live", qos=1, retain=True)
    m = s.wait_message(topic)
    assert (m.payload, m.retain) == (b"live", False)


def test_v5_retain_as_published(broker):
    """v5: with Retain As Published=1 the forwarded RETAIN flag equals the published one
    [MQTT-3.3.1-13]."""
    topic = unique("rap")
    s = connect(broker)
    s.subscribe(topic, 1, retain_as_published=True)
    p = connect(broker)
    p.publish(topic, b"r", qos=1, retain=True)
    p.publish(topic, b"n", qos=1, retain=False)
    got = {m.payload: m.retain for m in s.wait_messages(2, topic=topic)}
    assert got == {b"r": True, b"n": False}


@pytest.mark.parametrize("handling", [0, 1, 2])
def test_v5_retain_handling(broker, handling):
    """v5 Retain Handling: 0 sends retained messages on every SUBSCRIBE [MQTT-3.3.1-9]
    [MQTT-3.8.4-4]; 1 only if the subscription did not exist [MQTT-3.3.1-10]; 2 never
    [MQTT-3.3.1-11]."""
    topic = unique("rh")
    p = _retain(broker, 5, topic, b"ret")
    s = connect(broker)
    s.subscribe(topic, 1, retain_handling=handling)
    s.subscribe(topic, 1, retain_handling=handling)  # re-subscribe: subscription exists
    barrier(p, s)
    quiet()
    expected = {0: 2, 1: 1, 2: 0}[handling]
    got = s.received(topic)
    assert len(got) == expected, f"retain handling {handling}: got {got}"
    assert all(m.retain for m in got)
