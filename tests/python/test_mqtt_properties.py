"""v5 PUBLISH properties: Message Expiry Interval, and the properties a broker must pass
through unaltered (User Property, Response Topic, Correlation Data, Content Type,
Payload Format Indicator). Also checks that 3.1.1 subscribers get plain messages.

All pass against Mosquitto 2.0.11.
"""

import time

from mqttclient import barrier, connect, quiet, unique

PASSTHROUGH = {
    "user_property": [("b", "2"), ("a", "1"), ("b", "dup key"), ("ünï", "cödé")],
    "response_topic": "reply/to/me",
    "correlation_data": bytes(range(256))[:64] + b"\x00\xff",
    "content_type": "application/json; charset=utf-8",
    "payload_format": 1,
}


def test_v5_properties_passed_through_unaltered(broker):
    """v5: the broker forwards Payload Format Indicator [MQTT-3.3.2-4], Response Topic
    [MQTT-3.3.2-15], Correlation Data [MQTT-3.3.2-16], User Properties unaltered and in
    order, duplicates included [MQTT-3.3.2-17] [MQTT-3.3.2-18], and Content Type
    [MQTT-3.3.2-20], for each QoS."""
    topic = unique("props")
    s = connect(broker)
    s.subscribe(topic, 2)
    p = connect(broker)
    for q in (0, 1, 2):
        p.publish(topic, b'{"q": %d}' % q, qos=q, properties=PASSTHROUGH)
    for m in s.wait_messages(3, topic=topic):
        assert m.user_properties == PASSTHROUGH["user_property"]
        assert m.response_topic == PASSTHROUGH["response_topic"]
        assert m.correlation_data == PASSTHROUGH["correlation_data"]
        assert m.content_type == PASSTHROUGH["content_type"]
        assert m.payload_format == 1


def test_v5_retained_message_keeps_properties(broker):
    """v5: a retained message delivered on SUBSCRIBE keeps its properties (they are part
    of the Application Message, [MQTT-3.3.2-17] [MQTT-3.3.2-15] [MQTT-3.3.2-16])."""
    topic = unique("props")
    p = connect(broker)
    p.publish(topic, b"{}", qos=1, retain=True, properties=PASSTHROUGH)
    s = connect(broker)
    s.subscribe(topic, 1)
    m = s.wait_message(topic)
    assert m.retain
    assert m.user_properties == PASSTHROUGH["user_property"]
    assert m.correlation_data == PASSTHROUGH["correlation_data"]
    assert m.content_type == PASSTHROUGH["content_type"]


def test_v5_publisher_to_v311_subscriber(broker):
    """A v5 publication with properties reaches a 3.1.1 subscriber as a plain message."""
    topic = unique("props")
    s = connect(broker, protocol=4)
    s.subscribe(topic, 1)
    p = connect(broker)
    p.publish(topic, b"plain", qos=1, properties=PASSTHROUGH)
    m = s.wait_message(topic)
    assert (m.payload, m.qos) == (b"plain", 1)


def test_v5_message_expiry_forwarded_live(broker):
    """v5: a live message carries Message Expiry Interval no greater than the published
    one [MQTT-3.3.2-6]; a message without expiry gets none."""
    topic = unique("expiry")
    s = connect(broker)
    s.subscribe(topic, 1)
    p = connect(broker)
    p.publish(topic, b"e", qos=1, properties={"message_expiry": 100})
    p.publish(topic, b"n", qos=1)
    e, n = s.wait_messages(2, topic=topic)
    assert 0 < e.message_expiry <= 100
    assert n.message_expiry is None


def test_v5_message_expiry_for_offline_session(broker):
    """v5: for an offline session, a message whose Message Expiry Interval (1 s) passed is
    deleted [MQTT-3.3.2-5]; one still valid is delivered with the remaining interval,
    smaller than the published 30 s [MQTT-3.3.2-6]. The wait is the interval under test."""
    cid, topic = unique("expiry"), unique("expiry")
    s = connect(broker, cid, 5, session_expiry=60)
    s.subscribe(topic, 1)
    s.disconnect()
    p = connect(broker)
    p.publish(topic, b"short", qos=1, properties={"message_expiry": 1})
    p.publish(topic, b"long", qos=1, properties={"message_expiry": 30})
    p.publish(topic, b"forever", qos=1)
    time.sleep(2.2)
    s = connect(broker, cid, 5, clean=False, session_expiry=60)
    assert s.connack.session_present
    s.wait_messages(2, topic=topic)
    barrier(p, s)
    quiet()
    got = s.received(topic)
    assert [m.payload for m in got] == [b"long", b"forever"]
    assert got[0].message_expiry is not None and got[0].message_expiry < 30
    assert got[1].message_expiry is None


def test_v5_retained_message_expires(broker):
    """v5: a retained message is not sent once its Message Expiry Interval has passed
    (section 3.3.2.3.3, [MQTT-3.3.2-5]); the remaining interval is forwarded on a fresh
    subscription before that [MQTT-3.3.2-6]."""
    short, long_ = unique("rexp"), unique("rexp")
    p = connect(broker)
    p.publish(short, b"s", qos=1, retain=True, properties={"message_expiry": 1})
    p.publish(long_, b"l", qos=1, retain=True, properties={"message_expiry": 60})
    time.sleep(2.2)
    s = connect(broker)
    s.subscribe([(short, 1), (long_, 1)])
    m = s.wait_message(long_)
    assert m.retain and 0 < m.message_expiry < 60
    barrier(p, s)
    quiet()
    assert s.received(short) == []
