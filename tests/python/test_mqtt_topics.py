"""Topic matching: `+` and `#` wildcards, `$`-topics, and overlapping subscriptions.

Known failures against Mosquitto 2.0.11:
- test_v5_overlapping_subscriptions_one_copy_with_all_identifiers: Mosquitto sends one
  copy per subscription, each with its own identifier ([MQTT-3.3.4-5] allows that);
  ferromq sends a single copy with all identifiers ([MQTT-3.3.4-4]).
"""

import pytest

from mqttclient import barrier, both_protocols, connect, quiet, unique

# filter (relative to a per-test prefix P) -> topics (relative to P) it must match, out of
# TOPICS below
CASES = {
    "sport/tennis/+": ["sport/tennis/player1", "sport/tennis/player2"],
    "sport/#": ["sport", "sport/", "sport/golf", "sport/tennis", "sport/tennis/player1",
                "sport/tennis/player2", "sport/tennis/player1/ranking"],
    "sport/+": ["sport/", "sport/golf", "sport/tennis"],
    "+/tennis/#": ["sport/tennis", "sport/tennis/player1", "sport/tennis/player2",
                   "sport/tennis/player1/ranking", "sports/tennis"],
    "sport/+/player1": ["sport/tennis/player1"],
    "+/+": ["sport/", "sport/golf", "sport/tennis", "sports/tennis"],
    "+": ["sport"],
    "sport/tennis/player1": ["sport/tennis/player1"],
    "Sport/#": [],
}
TOPICS = ["sport", "sport/", "sport/golf", "sport/tennis", "sport/tennis/player1", "sport/tennis/player2",
          "sport/tennis/player1/ranking", "sports/tennis"]


@both_protocols
@pytest.mark.parametrize("flt", list(CASES))
def test_wildcard_matching(broker, proto, flt):
    """`#` matches the parent and any number of levels (section 4.7.1.2, [MQTT-4.7.1-1]);
    `+` matches exactly one level, including an empty one (section 4.7.1.3,
    [MQTT-4.7.1-2]); the delivered Topic Name is the published one [MQTT-3.3.2-3];
    matching is exact, no case folding [MQTT-4.7.3-4]."""
    prefix = unique("wc") + "/p"
    s = connect(broker, protocol=proto)
    s.subscribe(f"{prefix}/{flt}", 1)
    p = connect(broker, protocol=proto)
    for t in TOPICS:
        p.publish(f"{prefix}/{t}", t.encode(), qos=1)
    expected = sorted(CASES[flt])
    s.wait_messages(len(expected))
    barrier(p, s)
    quiet(0.3)
    got = sorted(m.topic[len(prefix) + 1:] for m in s.received() if m.topic.startswith(prefix + "/"))
    assert got == expected
    assert all(m.payload.decode() == m.topic[len(prefix) + 1:] for m in s.received()
               if m.topic.startswith(prefix + "/"))


@both_protocols
def test_dollar_topics_not_matched_by_leading_wildcards(broker_factory, proto):
    """Filters starting with `#` or `+` do not match Topic Names starting with `$`
    [MQTT-4.7.2-1]; `$SYS/#` does. Uses the broker's own $SYS messages (sys_interval 1)."""
    broker = broker_factory("sys_interval 1\n")
    wild = connect(broker, protocol=proto)
    wild.subscribe([("#", 0), ("+/broker/#", 0), ("+/+/version", 0)])
    sys = connect(broker, protocol=proto)
    sys.subscribe("$SYS/#", 0)
    sys.wait_messages(3, timeout=15)  # $SYS traffic is flowing
    barrier(sys, wild)
    quiet()
    leaked = [m.topic for m in wild.received() if m.topic.startswith("$")]
    assert leaked == []


@both_protocols
def test_bare_hash_sees_normal_topics(broker, proto):
    """A bare `#` receives every topic not starting with `$` (section 4.7.1.2; the positive
    counterpart of [MQTT-4.7.2-1])."""
    s = connect(broker, protocol=proto)
    s.subscribe("#", 1)
    p = connect(broker, protocol=proto)
    topic = unique("hash") + "/x/y"
    p.publish(topic, b"1", qos=1)
    assert s.wait_message(topic).payload == b"1"


def test_v311_overlapping_subscriptions_deliver_one_copy(broker):
    """3.1.1: with overlapping subscriptions (QoS 0, 1 and 2) the message is delivered at
    the maximum QoS of the matching subscriptions [MQTT-3.3.5-1]. The spec allows extra
    copies; ferromq (like Mosquitto for 3.1.1) sends exactly one."""
    base = unique("ovl")
    s = connect(broker, protocol=4)
    s.subscribe([(f"{base}/#", 0), (f"{base}/a", 2), (f"{base}/+", 1)])
    p = connect(broker, protocol=4)
    p.publish(f"{base}/a", b"x", qos=2)
    s.wait_message(f"{base}/a")
    barrier(p, s)
    quiet()
    got = s.received(f"{base}/a")
    assert max(m.qos for m in got) == 2
    assert len(got) == 1, f"expected one copy, got {[(m.qos) for m in got]}"


def test_v5_overlapping_subscriptions_one_copy_with_all_identifiers(broker):
    """v5: overlapping subscriptions yield one copy at the maximum QoS [MQTT-3.3.4-2]
    carrying the Subscription Identifiers of all matching subscriptions [MQTT-3.3.4-3]
    [MQTT-3.3.4-4]."""
    base = unique("ovl")
    s = connect(broker)
    s.subscribe(f"{base}/#", 0, sub_id=1)
    s.subscribe(f"{base}/a", 2, sub_id=2)
    s.subscribe(f"{base}/+", 1, sub_id=3)
    p = connect(broker)
    p.publish(f"{base}/a", b"x", qos=2)
    s.wait_message(f"{base}/a")
    barrier(p, s)
    quiet()
    got = s.received(f"{base}/a")
    assert len(got) == 1, f"expected one copy, got {got}"
    assert got[0].qos == 2
    assert got[0].subscription_ids == [1, 2, 3]
