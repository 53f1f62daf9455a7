"""Will messages: when they are and are not published, v5 Will Delay Interval, will
retain and will properties.

All pass against Mosquitto 2.0.11.
"""

import time

from mqttclient import Client, barrier, both_protocols, connect, quiet, unique


def _watch(broker, proto, topic):
    w = connect(broker, protocol=proto)
    w.subscribe(topic, 2)
    return w


@both_protocols
def test_will_published_on_abrupt_close(broker, proto):
    """A connection closed without DISCONNECT publishes the will [MQTT-3.1.2-8], at the
    will QoS (capped by the subscription) with its payload."""
    topic = unique("will")
    w = _watch(broker, proto, topic)
    c = connect(broker, protocol=proto, will={"topic": topic, "payload": b"bye", "qos": 1})
    c.close_abruptly()
    m = w.wait_message(topic)
    assert (m.payload, m.qos, m.retain) == (b"bye", 1, False)


@both_protocols
def test_no_will_on_normal_disconnect(broker, proto):
    """DISCONNECT (v5: reason 0x00) discards the will without publishing it
    [MQTT-3.1.2-10] [MQTT-3.14.4-3]."""
    topic = unique("will")
    w = _watch(broker, proto, topic)
    cid = unique("will")
    c = connect(broker, cid, proto, will={"topic": topic, "payload": b"bye", "qos": 1})
    c.disconnect()
    # the broker has finished with the old connection once the id can connect again
    connect(broker, cid, proto)
    barrier(w, w)
    quiet()
    assert w.received(topic) == []


def test_v5_disconnect_with_will_message_publishes_will(broker):
    """v5: DISCONNECT with Reason Code 0x04 (Disconnect with Will Message) publishes the
    will (section 3.14.2.1), and Will Properties are forwarded (section 3.1.3.2; user
    property order [MQTT-3.1.3-10])."""
    topic = unique("will")
    w = _watch(broker, 5, topic)
    props = {"content_type": "text/plain", "user_property": [("k", "v")]}
    c = connect(broker, protocol=5, will={"topic": topic, "payload": b"bye", "qos": 1, "properties": props})
    c.disconnect(reason_code=0x04)
    m = w.wait_message(topic)
    assert m.payload == b"bye"
    assert m.content_type == "text/plain"
    assert m.user_properties == [("k", "v")]


@both_protocols
def test_will_retain(broker, proto):
    """Will Retain=1 publishes the will as a retained message [MQTT-3.1.2-17] (3.1.1) /
    [MQTT-3.1.2-15] (5.0): a later subscriber receives it with RETAIN=1."""
    topic = unique("will-ret")
    w = _watch(broker, proto, topic)
    c = connect(broker, protocol=proto, will={"topic": topic, "payload": b"last", "qos": 1, "retain": True})
    c.close_abruptly()
    assert w.wait_message(topic).payload == b"last"  # the will has been published
    late = connect(broker, protocol=proto)
    late.subscribe(topic, 1)
    m = late.wait_message(topic)
    assert (m.payload, m.retain) == (b"last", True)


def test_v5_will_delay(broker):
    """v5: the will is published only after the Will Delay Interval (1 s) has passed
    [MQTT-3.1.2-8] (section 3.1.3.2.2)."""
    topic = unique("will-delay")
    w = _watch(broker, 5, topic)
    c = connect(broker, protocol=5, session_expiry=30,
                will={"topic": topic, "payload": b"late", "properties": {"will_delay": 1}})
    c.close_abruptly()
    start = time.monotonic()
    m = w.wait_message(topic)
    elapsed = time.monotonic() - start
    assert m.payload == b"late"
    assert elapsed >= 0.8, f"will published after {elapsed:.2f}s, before its 1 s delay"


def test_v5_will_delay_cut_short_by_session_expiry(broker):
    """v5: with Will Delay 30 s but Session Expiry 1 s the will is published when the
    session ends, ~1 s after the close [MQTT-3.1.2-8] (section 3.1.3.2.2: whichever
    happens first)."""
    topic = unique("will-delay")
    w = _watch(broker, 5, topic)
    c = connect(broker, protocol=5, session_expiry=1,
                will={"topic": topic, "payload": b"session over", "properties": {"will_delay": 30}})
    c.close_abruptly()
    start = time.monotonic()
    m = w.wait_message(topic, timeout=6)
    assert m.payload == b"session over"
    assert time.monotonic() - start >= 0.8


def test_v5_reconnect_within_will_delay_cancels_will(broker):
    """v5: a new connection to the session before the Will Delay Interval has passed means
    the will MUST NOT be sent [MQTT-3.1.3-9]."""
    topic = unique("will-delay")
    w = _watch(broker, 5, topic)
    cid = unique("will-delay")
    will = {"topic": topic, "payload": b"should not", "properties": {"will_delay": 1}}
    c = connect(broker, cid, 5, session_expiry=30, will=will)
    c.close_abruptly()
    c2 = Client(broker, cid, 5, clean=False, session_expiry=30)
    c2.connect()
    assert c2.connack.session_present is True
    quiet(2.0)  # past the 1 s delay, plus margin
    barrier(w, w)
    assert w.received(topic) == []
