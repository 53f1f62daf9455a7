"""Shared subscriptions (`$share/{ShareName}/{filter}`, section 4.8.2), for 5.0 clients and,
as an extension Mosquitto also offers, 3.1.1 clients.

All pass against Mosquitto 2.0.11.
"""

from mqttclient import barrier, both_protocols, connect, quiet, unique, wait_until

N = 20


@both_protocols
def test_shared_subscription_distributes_each_message_once(broker, proto):
    """Each message matching a shared subscription goes to exactly one member of the
    group (section 4.8.2), both members are used, and a non-shared subscription on the
    same topic still gets every message [MQTT-4.8.2-1] [MQTT-4.8.2-2]."""
    topic = unique("shared")
    members = [connect(broker, protocol=proto) for _ in range(2)]
    for m in members:
        assert m.subscribe(f"$share/grp/{topic}", 1) == [1]
    plain = connect(broker, protocol=proto)
    plain.subscribe(topic, 1)
    pub = connect(broker, protocol=proto)
    for i in range(N):
        pub.publish(topic, str(i).encode(), qos=1)
    assert sorted(int(m.payload) for m in plain.wait_messages(N, topic=topic)) == list(range(N))
    # the plain subscriber has all N; wait until the group has them too
    wait_until(lambda: sum(len(m.received(topic)) for m in members) >= N, 10, "shared deliveries")
    barrier(pub, plain)
    quiet()
    got = [int(msg.payload) for m in members for msg in m.received(topic)]
    assert sorted(got) == list(range(N)), "each message exactly once across the group"
    assert all(m.received(topic) for m in members), \
        f"one member got nothing: {[len(m.received(topic)) for m in members]}"
    # the delivered topic is the real topic, not the $share filter
    assert all(msg.topic == topic for m in members for msg in m.received(topic))


@both_protocols
def test_separate_share_groups_each_get_a_copy(broker, proto):
    """Different ShareNames are different shared subscriptions: each group gets every
    message once (section 4.8.2)."""
    topic = unique("shared")
    a = connect(broker, protocol=proto)
    b = connect(broker, protocol=proto)
    a.subscribe(f"$share/ga/{topic}", 1)
    b.subscribe(f"$share/gb/{topic}", 1)
    pub = connect(broker, protocol=proto)
    for i in range(5):
        pub.publish(topic, str(i).encode(), qos=1)
    assert [int(m.payload) for m in a.wait_messages(5, topic=topic)] == list(range(5))
    assert [int(m.payload) for m in b.wait_messages(5, topic=topic)] == list(range(5))


def test_shared_subscription_with_wildcard_filter(broker):
    """A shared subscription's filter may contain wildcards [MQTT-4.8.2-2]."""
    base = unique("shared")
    a = connect(broker)
    a.subscribe(f"$share/g/{base}/+/x", 1)
    pub = connect(broker)
    pub.publish(f"{base}/1/x", b"hit", qos=1)
    pub.publish(f"{base}/1/y", b"miss", qos=1)
    m = a.wait_message(f"{base}/1/x")
    assert m.payload == b"hit"
    barrier(pub, a)
    quiet()
    assert a.received(f"{base}/1/y") == []
