"""Offline message queue of persistent sessions: what is stored while the client is away
(QoS 1/2 always, QoS 0 only with `queue_qos0_messages`), the `max_queued_messages`
bound and its overflow policy (drop the NEWEST message, like Mosquitto), and order.

All pass against Mosquitto 2.0.11.
"""

from mqttclient import barrier, both_protocols, connect, quiet, unique


def _persistent(broker, proto, cid, **kw):
    if proto == 5:
        return connect(broker, cid, 5, session_expiry=60, **kw)
    return connect(broker, cid, 4, **kw)


def _go_offline(broker, proto, topic, qos=1):
    cid = unique("q")  # fresh id: there is no old session to resume
    s = _persistent(broker, proto, cid, clean=False)
    s.subscribe(topic, qos)
    s.disconnect()
    return cid


def _come_back(broker, proto, cid):
    s = _persistent(broker, proto, cid, clean=False)
    assert s.connack.session_present is True
    return s


@both_protocols
def test_offline_messages_delivered_in_order(broker, proto):
    """QoS 1 and 2 messages published while a persistent session is offline are stored
    and delivered on reconnect [MQTT-3.1.2-4] (3.1.1) / [MQTT-3.1.2-5] (5.0), at their
    QoS, in publish order per topic and QoS [MQTT-4.6.0-5]."""
    topic = unique("q")
    cid = _go_offline(broker, proto, topic, qos=2)
    p = connect(broker, protocol=proto)
    for i in range(8):
        p.publish(topic, str(i).encode(), qos=1 + i % 2)
    s = _come_back(broker, proto, cid)
    got = [(int(m.payload), m.qos) for m in s.wait_messages(8, topic=topic)]
    for q in (1, 2):
        assert [i for i, mq in got if mq == q] == [i for i in range(8) if 1 + i % 2 == q]


@both_protocols
def test_offline_queue_limit_drops_newest(broker_factory, proto):
    """Messages for offline sessions are added to their state [MQTT-4.5.0-1] up to the
    configured bound: with `max_queued_messages 5` an offline session keeps the first 5 messages and
    drops the newer ones (documented overflow policy, as in Mosquitto); the kept ones
    arrive in order."""
    broker = broker_factory("max_queued_messages 5\n")
    topic = unique("q")
    cid = _go_offline(broker, proto, topic)
    p = connect(broker, protocol=proto)
    for i in range(10):
        p.publish(topic, str(i).encode(), qos=1)
    s = _come_back(broker, proto, cid)
    s.wait_messages(5, topic=topic)
    barrier(p, s)
    quiet()
    assert [int(m.payload) for m in s.received(topic)] == [0, 1, 2, 3, 4]


@both_protocols
def test_qos0_not_queued_by_default(broker, proto):
    """QoS 0 messages for an offline session are not stored by default (storing them is
    optional, section 4.1); QoS 1 ones are."""
    topic = unique("q")
    cid = _go_offline(broker, proto, topic)
    p = connect(broker, protocol=proto)
    p.publish(topic, b"qos0", qos=0)
    p.publish(topic, b"qos1", qos=1)  # its PUBACK also proves the QoS 0 one was routed
    s = _come_back(broker, proto, cid)
    s.wait_message(topic)
    barrier(p, s)
    quiet()
    assert [m.payload for m in s.received(topic)] == [b"qos1"]


@both_protocols
def test_queue_qos0_messages_option(broker_factory, proto):
    """With `queue_qos0_messages true` QoS 0 messages are stored for offline sessions
    too, in order with the others."""
    broker = broker_factory("queue_qos0_messages true\n")
    topic = unique("q")
    cid = _go_offline(broker, proto, topic)
    p = connect(broker, protocol=proto)
    p.publish(topic, b"a", qos=0)
    p.publish(topic, b"b", qos=1)
    p.publish(topic, b"c", qos=0)
    p.publish(unique("sync"), b"", qos=1)  # PUBACK: everything before it was routed
    s = _come_back(broker, proto, cid)
    got = s.wait_messages(3, topic=topic)
    assert [(m.payload, m.qos) for m in got] == [(b"a", 0), (b"b", 1), (b"c", 0)]
