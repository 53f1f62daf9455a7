"""QoS 0/1/2 in both directions: acknowledgement flows, packet identifiers, QoS
downgrade, ordering, flow control (Receive Maximum) and redelivery on session resume.

Known failures against Mosquitto 2.0.11:
- test_v5_exceeding_server_receive_maximum_disconnects: Mosquitto answers the excess
  QoS 2 PUBLISH with PUBREC 0x97 (Quota exceeded) and keeps the connection, instead of
  DISCONNECT 0x93 (Receive Maximum exceeded, section 3.3.4).
"""

import pytest

from mqttclient import (PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, RawClient, both_protocols, connect,
                        raw_connect, unique)


@both_protocols
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_qos_delivered_at_minimum_of_publish_and_subscription(broker, proto, sub_qos):
    """Messages are delivered at min(publish QoS, granted QoS) [MQTT-3.8.4-6] (3.1.1) /
    [MQTT-3.8.4-8] (5.0); SUBACK grants the requested QoS [MQTT-3.8.4-7]."""
    topic = unique("qos")
    sub = connect(broker, protocol=proto)
    assert sub.subscribe(topic, sub_qos) == [sub_qos]
    pub = connect(broker, protocol=proto)
    for q in (0, 1, 2):
        pub.publish(topic, f"q{q}".encode(), qos=q)
    got = {m.payload: m.qos for m in sub.wait_messages(3, topic=topic)}
    assert got == {b"q0": 0, b"q1": min(1, sub_qos), b"q2": min(2, sub_qos)}


@both_protocols
def test_ordering_per_publisher(broker, proto):
    """Messages from one publisher on one topic arrive in publish order [MQTT-4.6.0-5]
    [MQTT-4.6.0-6]."""
    topic = unique("order")
    sub = connect(broker, protocol=proto)
    sub.subscribe(topic, 1)
    pub = connect(broker, protocol=proto)
    for i in range(30):
        pub.publish(topic, str(i).encode(), qos=1, wait=False)
    got = [int(m.payload) for m in sub.wait_messages(30, topic=topic)]
    assert got == list(range(30))


@both_protocols
def test_broker_acknowledges_publishes(broker, proto):
    """QoS 1 is answered with PUBACK [MQTT-4.3.2-4]; QoS 2 with PUBREC [MQTT-4.3.3-8] and
    PUBREL with PUBCOMP [MQTT-4.3.3-11], all with the same Packet Identifier
    [MQTT-2.2.1-5]."""
    topic = unique("acks")
    sub = connect(broker, protocol=proto)
    sub.subscribe(topic, 2)
    r = raw_connect(broker, unique("acks"), proto)
    r.publish(topic, b"one", 1, packet_id=7)
    ack = r.expect(PUBACK)
    assert ack.packet_id == 7 and ack.reason_code == 0
    r.publish(topic, b"two", 2, packet_id=8)
    rec = r.expect(PUBREC)
    assert rec.packet_id == 8 and rec.reason_code == 0
    r.ack(PUBREL, 8)
    comp = r.expect(PUBCOMP)
    assert comp.packet_id == 8 and comp.reason_code == 0
    got = {m.payload: m.qos for m in sub.wait_messages(2, topic=topic)}
    assert got == {b"one": 1, b"two": 2}


@both_protocols
def test_qos2_resend_before_pubrel_is_not_duplicated(broker, proto):
    """Until PUBREL, a re-sent QoS 2 PUBLISH (DUP=1, same id) is acknowledged with PUBREC
    again and MUST NOT cause a duplicate delivery [MQTT-4.3.3-10]."""
    topic = unique("qos2dup")
    sub = connect(broker, protocol=proto)
    sub.subscribe(topic, 2)
    r = raw_connect(broker, unique("qos2dup"), proto)
    r.publish(topic, b"once", 2, packet_id=9)
    assert r.expect(PUBREC).packet_id == 9
    r.publish(topic, b"once", 2, packet_id=9, dup=True)
    assert r.expect(PUBREC).packet_id == 9
    r.ack(PUBREL, 9)
    assert r.expect(PUBCOMP).packet_id == 9
    # a new message with the same id afterwards is a new message [MQTT-4.3.3-12]
    r.publish(topic, b"again", 2, packet_id=9)
    assert r.expect(PUBREC).packet_id == 9
    r.ack(PUBREL, 9)
    r.expect(PUBCOMP)
    msgs = sub.wait_messages(2, topic=topic)
    assert [m.payload for m in msgs] == [b"once", b"again"]


@both_protocols
def test_outgoing_packet_ids_and_flows(broker, proto):
    """Broker-to-client: QoS 0 has no Packet Identifier [MQTT-2.2.1-2]; QoS 1/2 get
    non-zero, unused ids and DUP=0 on first delivery [MQTT-2.2.1-4] [MQTT-4.3.2-2]
    [MQTT-4.3.3-2]; after PUBREC the broker sends PUBREL with the same id
    [MQTT-4.3.3-4] and completes on PUBCOMP."""
    topic = unique("ids")
    r = raw_connect(broker, unique("ids"), proto)
    r.subscribe(topic, 2)
    pub = connect(broker, protocol=proto)
    for q in (0, 1, 2, 1, 2):
        pub.publish(topic, f"q{q}".encode(), qos=q)
    pkts = r.expect_publishes(5)
    assert sorted(p.qos for p in pkts) == [0, 1, 1, 2, 2]
    assert all(not p.dup for p in pkts)
    acked = [p for p in pkts if p.qos]
    ids = [p.packet_id for p in acked]
    assert all(0 < i < 65536 for i in ids)
    assert len(set(ids)) == len(ids), f"in-flight packet ids reused: {ids}"
    for p in acked:
        r.ack(PUBACK if p.qos == 1 else PUBREC, p.packet_id)
    for p in acked:
        if p.qos == 2:
            rel = r.expect(PUBREL, where=lambda x, pid=p.packet_id: x.packet_id == pid)
            assert rel.flags == 0x02
            r.ack(PUBCOMP, p.packet_id)
    # the flow is complete: the client can keep going
    pub.publish(topic, b"after", qos=1)
    assert r.expect(PUBLISH).payload == b"after"


def test_v5_client_receive_maximum_limits_inflight(broker):
    """v5: the broker sends at most the client's Receive Maximum (2) unacknowledged QoS 1
    PUBLISHes [MQTT-3.3.4-9] [MQTT-4.9.0-2]; the third follows once one is acknowledged."""
    topic = unique("recvmax")
    r = raw_connect(broker, unique("recvmax"), 5, properties={"receive_maximum": 2})
    r.subscribe(topic, 1)
    pub = connect(broker)
    for i in range(3):
        pub.publish(topic, f"m{i}".encode(), qos=1)
    first = r.expect_publishes(2)
    assert [p.payload for p in first] == [b"m0", b"m1"]
    extra = [p for p in r.collect(1.0) if p.type == PUBLISH]
    assert extra == [], f"broker exceeded Receive Maximum 2: {extra}"
    r.ack(PUBACK, first[0].packet_id)
    third = r.expect(PUBLISH)
    assert third.payload == b"m2"
    assert third.packet_id != first[1].packet_id


def test_v5_exceeding_server_receive_maximum_disconnects(broker_factory):
    """v5: `max_inflight_messages 2` is announced as Receive Maximum 2 in CONNACK; a client
    with 3 unacknowledged (no PUBREL) QoS 2 PUBLISHes breaks [MQTT-3.3.4-7] and the broker
    disconnects it with 0x93 Receive Maximum exceeded (section 3.3.4)."""
    broker = broker_factory("max_inflight_messages 2\n")
    r = RawClient(broker, 5)
    ack = r.connect(unique("flood"))
    assert ack.properties.get("receive_maximum") == 2
    topic = unique("flood")
    for i in range(1, 4):
        r.publish(topic, b"x", 2, packet_id=i)
    d = r.wait_closed(timeout=5)
    assert d is not None, f"closed without DISCONNECT; received {r.received}"
    assert d.reason_code == 0x93


@both_protocols
def test_redelivery_with_dup_on_session_resume(broker, proto):
    """On resuming a session (Clean Session / Clean Start = 0) the broker re-sends
    unacknowledged PUBLISHes with their original Packet Identifiers and DUP=1, and re-sends
    PUBREL for PUBREC'd QoS 2 messages instead of the PUBLISH [MQTT-4.4.0-1]
    [MQTT-3.3.1-1] [MQTT-4.3.3-6]."""
    cid, topic = unique("resume"), unique("resume")
    session = {"properties": {"session_expiry": 60}} if proto == 5 else {}
    r = raw_connect(broker, cid, proto, clean=False, **session)
    r.subscribe(topic + "/#", 2)
    pub = connect(broker, protocol=proto)
    pub.publish(topic + "/q1", b"q1", qos=1)
    pub.publish(topic + "/q2-unacked", b"q2u", qos=2)
    pub.publish(topic + "/q2-recd", b"q2r", qos=2)
    first = {p.payload: p for p in r.expect_publishes(3)}
    assert not any(p.dup for p in first.values())
    r.ack(PUBREC, first[b"q2r"].packet_id)
    assert r.expect(PUBREL).packet_id == first[b"q2r"].packet_id
    r.close()  # no PUBACK for q1, nothing for q2u, no PUBCOMP for q2r

    r2 = RawClient(broker, proto)
    ack = r2.connect(cid, clean=False, **session)
    assert ack.session_present is True
    again = {p.payload: p for p in r2.expect_publishes(2)}
    assert set(again) == {b"q1", b"q2u"}
    for payload in (b"q1", b"q2u"):
        assert again[payload].dup, f"{payload} re-sent without DUP"
        assert again[payload].packet_id == first[payload].packet_id
        assert again[payload].qos == first[payload].qos
    rel = r2.expect(PUBREL)
    assert rel.packet_id == first[b"q2r"].packet_id
    # finish all flows; nothing else is re-sent
    r2.ack(PUBACK, again[b"q1"].packet_id)
    r2.ack(PUBREC, again[b"q2u"].packet_id)
    r2.ack(PUBCOMP, rel.packet_id)
    rel2 = r2.expect(PUBREL)
    assert rel2.packet_id == again[b"q2u"].packet_id
    r2.ack(PUBCOMP, rel2.packet_id)
    leftovers = [p for p in r2.collect(0.7) if p.type == PUBLISH]
    assert leftovers == []
