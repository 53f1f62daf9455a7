"""SUBSCRIBE/UNSUBSCRIBE behaviour: SUBACK/UNSUBACK codes, subscription replacement,
v5 No Local and Subscription Identifiers.

All pass against Mosquitto 2.0.11.
"""

from mqttclient import barrier, both_protocols, connect, quiet, unique


@both_protocols
def test_suback_codes_in_order(broker, proto):
    """SUBACK has one code per filter, in order, each the granted QoS [MQTT-3.8.4-6]
    [MQTT-3.9.3-1] [MQTT-3.8.4-5]."""
    base = unique("suback")
    s = connect(broker, protocol=proto)
    assert s.subscribe([(f"{base}/2", 2), (f"{base}/0", 0), (f"{base}/1", 1)]) == [2, 0, 1]


@both_protocols
def test_resubscribe_replaces_subscription(broker, proto):
    """Subscribing again to an identical filter replaces the subscription (new QoS) rather
    than adding one, so messages are not duplicated [MQTT-3.8.4-3]."""
    topic = unique("resub")
    s = connect(broker, protocol=proto)
    s.subscribe(topic, 0)
    s.subscribe(topic, 2)
    p = connect(broker, protocol=proto)
    p.publish(topic, b"x", qos=2)
    assert s.wait_message(topic).qos == 2
    barrier(p, s)
    quiet()
    assert len(s.received(topic)) == 1


@both_protocols
def test_unsubscribe_stops_delivery(broker, proto):
    """UNSUBSCRIBE deletes the subscription and the broker stops sending matching messages
    [MQTT-3.10.4-1] [MQTT-3.10.4-2]; UNSUBACK answers it [MQTT-3.10.4-4]; other
    subscriptions are unaffected."""
    base = unique("unsub")
    s = connect(broker, protocol=proto)
    s.subscribe([(f"{base}/a", 1), (f"{base}/b", 1)])
    p = connect(broker, protocol=proto)
    p.publish(f"{base}/a", b"1", qos=1)
    s.wait_message(f"{base}/a")
    codes = s.unsubscribe(f"{base}/a")
    if proto == 5:
        assert codes == [0x00]
    p.publish(f"{base}/a", b"2", qos=1)
    p.publish(f"{base}/b", b"still", qos=1)
    assert s.wait_message(f"{base}/b").payload == b"still"
    barrier(p, s)
    quiet()
    assert [m.payload for m in s.received(f"{base}/a")] == [b"1"]


def test_v5_unsuback_no_subscription_existed(broker):
    """v5: UNSUBACK is sent even when nothing was deleted [MQTT-3.10.4-5], with Reason Code
    0x11 (No subscription existed) for that filter, codes in filter order [MQTT-3.11.3-1]."""
    base = unique("unsub")
    s = connect(broker)
    s.subscribe(f"{base}/yes", 1)
    assert s.unsubscribe([f"{base}/no", f"{base}/yes"]) == [0x11, 0x00]


def test_v311_unsuback_without_subscription(broker):
    """3.1.1: UNSUBACK is sent even where no subscription was deleted [MQTT-3.10.4-5]."""
    s = connect(broker, protocol=4)
    assert s.unsubscribe(unique("none")) == []
    assert s.is_connected()


def test_v5_no_local(broker):
    """v5: with No Local=1 the client's own publications are not forwarded back to it
    [MQTT-3.8.3-3]; other clients' publications are, and without No Local it gets its own."""
    topic, other = unique("nolocal"), unique("local")
    c = connect(broker)
    c.subscribe(topic, 1, no_local=True)
    c.subscribe(other, 1)
    c.publish(topic, b"mine", qos=1)
    c.publish(other, b"mine too", qos=1)
    assert c.wait_message(other).payload == b"mine too"
    p = connect(broker)
    p.publish(topic, b"theirs", qos=1)
    assert c.wait_message(topic).payload == b"theirs"
    barrier(p, c)
    quiet()
    assert [m.payload for m in c.received(topic)] == [b"theirs"]


def test_v5_subscription_identifiers(broker):
    """v5: a message carries the Subscription Identifier of the subscription it matched
    [MQTT-3.3.4-3]; re-subscribing with a new identifier replaces it [MQTT-3.8.4-3]; a
    subscription without identifier yields none."""
    base = unique("subid")
    s = connect(broker)
    s.subscribe(f"{base}/+", 1, sub_id=5)
    s.subscribe(f"{base}/plain", 1)
    p = connect(broker)
    p.publish(f"{base}/x", b"1", qos=1)
    assert s.wait_message(f"{base}/x").subscription_ids == [5]
    s.subscribe(f"{base}/+", 1, sub_id=700000)  # multi-byte variable integer
    p.publish(f"{base}/x", b"2", qos=1)
    msgs = s.wait_messages(2, topic=f"{base}/x")
    assert msgs[1].subscription_ids == [700000]
    other = connect(broker)
    other.subscribe(f"{base}/plain", 1)
    p.publish(f"{base}/plain", b"3", qos=1)
    m = other.wait_message(f"{base}/plain")
    assert m.subscription_ids == []
