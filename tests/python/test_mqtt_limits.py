"""Limits announced and enforced: Maximum Packet Size (both directions), Server Keep
Alive, Receive Maximum from the config.

All pass against Mosquitto 2.0.11.
"""

from mqttclient import RawClient, barrier, both_protocols, connect, quiet, unique


def test_v5_server_maximum_packet_size(broker_factory):
    """v5: `max_packet_size 200` is announced as Maximum Packet Size in CONNACK (section
    3.2.2.3.6); a client exceeding it breaks [MQTT-3.2.2-15] and gets DISCONNECT 0x95
    (Packet too large); the oversized message is not delivered."""
    broker = broker_factory("max_packet_size 200\n")
    topic = unique("big")
    s = connect(broker)
    assert s.connack.properties.get("maximum_packet_size") == 200
    s.subscribe(topic, 1)
    r = RawClient(broker, 5)
    r.connect(unique("big"))
    r.publish(topic, b"x" * 300, 1)
    d = r.wait_closed()
    assert d is not None and d.reason_code == 0x95, f"expected DISCONNECT 0x95, got {d}"
    p = connect(broker)
    p.publish(topic, b"small", qos=1)
    assert s.wait_message(topic).payload == b"small"
    assert [m.payload for m in s.received(topic)] == [b"small"]


def test_v311_packet_above_server_limit_closes_connection(broker_factory):
    """3.1.1 has no DISCONNECT from the server: a packet above `max_packet_size` just
    closes the connection and is not delivered."""
    broker = broker_factory("max_packet_size 200\n")
    topic = unique("big")
    s = connect(broker, protocol=4)
    s.subscribe(topic, 1)
    r = RawClient(broker, 4)
    r.connect(unique("big"))
    r.publish(topic, b"x" * 300, 1)
    r.wait_closed()
    p = connect(broker, protocol=4)
    p.publish(topic, b"small", qos=1)
    assert s.wait_message(topic).payload == b"small"
    assert [m.payload for m in s.received(topic)] == [b"small"]


@both_protocols
def test_v5_subscriber_maximum_packet_size(broker, proto):
    """v5 subscriber: the broker never sends a packet above the client's Maximum Packet Size (128)
    [MQTT-3.1.2-24]; it discards such a message as if sent [MQTT-3.1.2-25] and keeps
    delivering smaller ones. The publisher may be 3.1.1 or 5.0."""
    topic = unique("cmax")
    s = connect(broker, properties={"maximum_packet_size": 128})
    s.subscribe(topic, 1)
    p = connect(broker, protocol=proto)
    p.publish(topic, b"a" * 20, qos=1)
    p.publish(topic, b"B" * 400, qos=1)
    p.publish(topic, b"c" * 20, qos=1)
    s.wait_messages(2, topic=topic)
    barrier(p, s)
    quiet()
    assert [m.payload[:1] for m in s.received(topic)] == [b"a", b"c"]
    assert s.is_connected()


def test_v5_server_keep_alive_from_config(broker_factory):
    """v5: with `max_keepalive 60`, a client asking for Keep Alive 120 gets Server Keep
    Alive 60 in CONNACK and must use it [MQTT-3.2.2-21] (section 3.2.2.3.14); a client
    asking for 30 keeps its own [MQTT-3.2.2-22]."""
    broker = broker_factory("max_keepalive 60\n")
    c = connect(broker, keepalive=120)
    assert c.connack.properties.get("server_keep_alive") == 60
    c2 = connect(broker, keepalive=30)
    assert c2.connack.properties.get("server_keep_alive") in (None, 30)


def test_v5_receive_maximum_from_config(broker_factory):
    """v5: `max_inflight_messages 5` is the server's Receive Maximum, announced in CONNACK
    (section 3.2.2.3.3)."""
    broker = broker_factory("max_inflight_messages 5\n")
    c = connect(broker)
    assert c.connack.properties.get("receive_maximum") == 5
