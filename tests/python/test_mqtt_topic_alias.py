"""v5 Topic Aliases, client-to-broker and broker-to-client (section 3.3.2.3.4).

Known failures against Mosquitto 2.0.11:
- test_v5_broker_uses_topic_alias_toward_client: Mosquitto never assigns topic aliases on
  outgoing PUBLISHes (allowed by the spec; ferromq does, to save bandwidth).
- test_v5_topic_alias_zero_disconnects: Mosquitto answers Topic Alias 0 with DISCONNECT
  0x81 (Malformed Packet); ferromq uses 0x94 (Topic Alias invalid) for every bad alias.
"""

from mqttclient import PUBACK, RawClient, connect, raw_connect, unique


def _publisher(broker):
    return raw_connect(broker, unique("alias"), 5)


def test_v5_connack_topic_alias_maximum(broker):
    """v5: the broker announces its Topic Alias Maximum in CONNACK (default 10, section
    3.2.2.3.8); without it the client could send no aliases [MQTT-3.2.2-18]."""
    c = connect(broker)
    assert c.connack.properties.get("topic_alias_maximum") == 10


def test_v5_client_topic_alias(broker):
    """v5: the broker accepts every alias 1..Topic Alias Maximum [MQTT-3.3.2-12]: a
    PUBLISH with topic + alias sets the mapping, later ones may send only the alias, and
    a new topic with the same alias replaces the mapping."""
    base = unique("alias")
    s = connect(broker)
    s.subscribe(f"{base}/#", 1)
    r = _publisher(broker)
    r.publish(f"{base}/one", b"a", 1, properties={"topic_alias": 1})
    r.publish("", b"b", 1, properties={"topic_alias": 1})
    r.publish(f"{base}/ten", b"c", 1, properties={"topic_alias": 10})
    r.publish(f"{base}/two", b"d", 1, properties={"topic_alias": 1})
    r.publish("", b"e", 1, properties={"topic_alias": 1})
    r.publish("", b"f", 1, properties={"topic_alias": 10})
    for _ in range(6):
        assert r.expect(PUBACK).reason_code in (0x00, 0x10)
    got = [(m.topic, m.payload) for m in s.wait_messages(6)]
    assert got == [(f"{base}/one", b"a"), (f"{base}/one", b"b"), (f"{base}/ten", b"c"),
                   (f"{base}/two", b"d"), (f"{base}/two", b"e"), (f"{base}/ten", b"f")]
    # subscribers see the real topic, never the publisher's alias
    assert all(m.topic_alias is None for m in s.received())


def _expect_disconnect(r, code):
    d = r.wait_closed()
    assert d is not None, f"closed without DISCONNECT; received {r.received}"
    assert d.reason_code == code, f"DISCONNECT {d.reason_code:#x}, expected {code:#x}"


def test_v5_topic_alias_zero_disconnects(broker):
    """v5: Topic Alias 0 is not allowed [MQTT-3.3.2-8]; the broker disconnects with 0x94
    (Topic Alias invalid)."""
    r = _publisher(broker)
    r.publish(unique("alias"), b"x", 1, properties={"topic_alias": 0})
    _expect_disconnect(r, 0x94)


def test_v5_topic_alias_above_maximum_disconnects(broker):
    """v5: an alias above the broker's Topic Alias Maximum (10) breaks [MQTT-3.3.2-9]; the
    broker disconnects with 0x94 (Topic Alias invalid)."""
    r = _publisher(broker)
    r.publish(unique("alias"), b"x", 1, properties={"topic_alias": 11})
    _expect_disconnect(r, 0x94)


def test_v5_unknown_topic_alias_is_protocol_error(broker):
    """v5: an empty Topic Name with an alias that has no mapping is a Protocol Error
    (section 3.3.4): DISCONNECT 0x82."""
    r = _publisher(broker)
    r.publish("", b"x", 1, properties={"topic_alias": 3})
    _expect_disconnect(r, 0x82)


def test_v5_topic_alias_not_carried_across_connections(broker):
    """v5: alias mappings do not survive the connection [MQTT-3.3.2-7]: after reconnecting
    (same session) an alias-only PUBLISH is a Protocol Error (0x82)."""
    cid = unique("alias")
    r = raw_connect(broker, cid, 5, clean=False, properties={"session_expiry": 60})
    r.publish(unique("alias"), b"x", 1, properties={"topic_alias": 1})
    r.expect(PUBACK)
    r.disconnect()
    r2 = RawClient(broker, 5)
    assert r2.connect(cid, clean=False, properties={"session_expiry": 60}).session_present
    r2.publish("", b"y", 1, properties={"topic_alias": 1})
    _expect_disconnect(r2, 0x82)


def test_v5_no_broker_aliases_without_client_maximum(broker):
    """v5: a client that sent no Topic Alias Maximum gets no aliases [MQTT-3.1.2-27]."""
    topic = unique("alias")
    r = raw_connect(broker, unique("alias"), 5)
    r.subscribe(topic, 0)
    p = connect(broker)
    for i in range(3):
        p.publish(topic, str(i).encode(), qos=1)
    for pkt in r.expect_publishes(3):
        assert pkt.topic == topic
        assert "topic_alias" not in pkt.properties


def test_v5_broker_uses_topic_alias_toward_client(broker):
    """v5: with the client's Topic Alias Maximum 1, the broker sends the topic once with
    alias 1 and later PUBLISHes to that topic with an empty Topic Name and the alias; it
    never uses an alias above the client's maximum [MQTT-3.3.2-11] [MQTT-3.1.2-26]."""
    topic = unique("alias")
    r = raw_connect(broker, unique("alias"), 5, properties={"topic_alias_maximum": 1})
    r.subscribe(topic, 0)
    p = connect(broker)
    p.publish(topic, b"1", qos=1)
    p.publish(topic, b"2", qos=1)
    first, second = r.expect_publishes(2)
    assert first.payload == b"1" and second.payload == b"2"
    assert first.topic == topic
    assert first.properties.get("topic_alias") == 1, f"first PUBLISH set no alias: {first}"
    assert second.topic == "" and second.properties.get("topic_alias") == 1, f"alias not used: {second}"


def test_v5_paho_client_sees_full_topics_with_alias_maximum(broker):
    """v5: a paho client announcing Topic Alias Maximum 1 receives correct topics for
    interleaved topics, whether or not the broker uses (and re-maps) aliases
    [MQTT-3.3.2-10] [MQTT-3.3.2-11]."""
    base = unique("alias")
    s = connect(broker, properties={"topic_alias_maximum": 1})
    s.subscribe(f"{base}/#", 1)
    p = connect(broker)
    sent = [f"{base}/a", f"{base}/a", f"{base}/b", f"{base}/a", f"{base}/b", f"{base}/b"]
    for i, t in enumerate(sent):
        p.publish(t, str(i).encode(), qos=1)
    got = s.wait_messages(len(sent))
    assert [(m.topic, int(m.payload)) for m in got] == [(t, i) for i, t in enumerate(sent)]
    assert all(m.topic_alias in (None, 1) for m in got)
