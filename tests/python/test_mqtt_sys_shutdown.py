"""$SYS topics (Mosquitto names, published every `sys_interval` seconds, retained) and
graceful shutdown on SIGTERM.

Known failures against Mosquitto 2.0.11:
- test_sigterm_sends_disconnect_0x8b_and_exits_0: Mosquitto 2.0.11 closes connections
  on SIGTERM without sending v5 clients DISCONNECT 0x8B (Server shutting down).
"""

import signal
import time

from mqttclient import connect, wait_until


def test_sys_topics_published(broker_factory):
    """$SYS is the broker's reserved `$` space (section 4.7.2). With `sys_interval 1`,
    `$SYS/#` yields $SYS/broker/version, $SYS/broker/uptime and
    $SYS/broker/clients/connected with plausible values, retained and refreshed."""
    broker = broker_factory("sys_interval 1\n")
    others = [connect(broker) for _ in range(2)]
    s = connect(broker, protocol=4)
    s.subscribe("$SYS/#", 0)

    def latest(topic):
        got = s.received(topic)
        return got[-1] if got else None

    wait_until(lambda: all(latest(t) for t in ("$SYS/broker/version", "$SYS/broker/uptime",
                                               "$SYS/broker/clients/connected")), 15, "$SYS topics")
    assert latest("$SYS/broker/version").payload.strip()
    uptime = latest("$SYS/broker/uptime").payload.decode()
    assert uptime.split()[0].isdigit(), uptime  # "N seconds"
    # the value catches up with the 3 connected clients (it may first be a stale one)
    wait_until(lambda: any(int(m.payload) >= len(others) + 1
                           for m in s.received("$SYS/broker/clients/connected")), 15,
               "clients/connected >= 3")
    assert all(int(m.payload) < 1000 for m in s.received("$SYS/broker/clients/connected"))
    # periodic: a later uptime value arrives
    n = len(s.received("$SYS/broker/uptime"))
    s.wait_messages(n + 1, timeout=10, topic="$SYS/broker/uptime")
    # retained: a new subscriber gets the version straight away with RETAIN=1
    late = connect(broker)
    late.subscribe("$SYS/broker/version", 0)
    m = late.wait_message("$SYS/broker/version")
    assert m.retain


def test_sigterm_sends_disconnect_0x8b_and_exits_0(broker):
    """SIGTERM shuts the broker down gracefully: v5 clients get DISCONNECT 0x8B (Server
    shutting down, section 3.14.2.1), 3.1.1 clients see the connection close, and the
    process exits 0 within 10 s."""
    v5 = connect(broker, protocol=5)
    v311 = connect(broker, protocol=4)
    start = time.monotonic()
    broker.proc.send_signal(signal.SIGTERM)
    d5 = v5.wait_disconnect(timeout=10)
    v311.wait_disconnect(timeout=10)
    code = broker.proc.wait(timeout=max(0.1, 10 - (time.monotonic() - start)))
    assert code == 0
    assert d5.from_server and d5.reason_code == 0x8B, f"v5 client got {d5}"
