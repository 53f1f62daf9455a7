"""The `[limits]` keys and their overflow policies, each against a well-behaved client
that must keep its service: connections per source address per second, connections
over all listeners, the per-client publish rate (the broker stops reading, nothing is
dropped), the retained-message budget (v5 PUBACK 0x97) and the topic length.

ferromq-only keys, set through `FERROMQ_LIMITS_*` / `FERROMQ_MQTT_*` variables.
"""

from __future__ import annotations

import os
import select
import socket
import time

import pytest

from bulkmqtt import proc_status
from conftest import wait_for
from mqttclient import (PUBACK, PUBREC, SUBACK, RawClient, connect, encode_subscribe, quiet, raw_connect,
                        unique)

pytestmark = pytest.mark.skipif(os.environ.get("FERROMQ_TEST_BROKER") == "mosquitto",
                                reason="ferromq's own limits")


def refused_sockets(socks: list[socket.socket], window: float = 1.0) -> int:
    """How many of `socks` the broker closes within `window` without a byte."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = 0
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(int(left * 1000) + 1):
            poller.unregister(fd)
            s = by_fd[fd]
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except OSError:
                closed += 1
    return closed


def closed_at_once(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the broker closes the socket without a byte, before we send anything."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_connection_rate_per_address(broker_factory):
    """limits.connection_rate_per_ip 20: a burst of 100 sockets from 127.0.0.4 has about
    80 closed at once (a log line names the address); 127.0.0.1 connects meanwhile."""
    broker = broker_factory("", env={"FERROMQ_LIMITS_CONNECTION_RATE_PER_IP": "20",
                                     "FERROMQ_MQTT_CONNECT_TIMEOUT": "60s"})
    socks = [socket.create_connection((broker.host, broker.port), source_address=("127.0.0.4", 0))
             for _ in range(100)]
    # Admitted sockets wait for CONNECT (60 s); refused ones are closed at once.
    refused = refused_sockets(socks)
    for s in socks:
        s.close()
    # 20 tokens plus what refilled while the burst was made.
    assert 30 <= refused <= 80, refused
    good = connect(broker, protocol=4)
    topic = unique("rate")
    good.subscribe(topic, 1)
    good.publish(topic, b"ok", qos=1)
    good.wait_message(topic)
    log = broker.log()
    assert "connection rate per address exceeded" in log and "127.0.0.4" in log


def test_max_connections_over_all_listeners(broker_factory):
    """`max_connections` before any listener block is broker-wide: over two listeners,
    the 6th connection is closed at once; when one leaves, a new one is accepted."""
    broker = broker_factory("max_connections 5\nlistener 0 127.0.0.1\nlistener 0 127.0.0.1\n")
    ports = [int(l["addr"].rsplit(":", 1)[1]) for l in broker.listeners if l["protocol"] == "mqtt"]
    assert len(ports) == 2
    clients = []
    for i in range(5):
        broker.port = ports[i % 2]
        clients.append(raw_connect(broker, unique("max")))
    for port in ports:
        s = socket.create_connection((broker.host, port))
        assert closed_at_once(s), "above the limit: closed at once"
        s.close()
    assert "limits.max_connections reached" in broker.log()
    clients.pop().close()
    broker.port = ports[0]
    wait_for(lambda: _connects(broker), what="a free slot after a client left")


def _connects(broker) -> bool:
    try:
        c = RawClient(broker, 5, timeout=2)
        ok = c.connect(unique("again"), check=False).reason_code == 0
        c.close()
        return ok
    except (AssertionError, OSError, TimeoutError):
        return False


def test_publish_rate_limit_pauses_reading(broker_factory):
    """limits.publish_rate_messages 100: a client firing 500 QoS 0 PUBLISHes is slowed
    down to the rate (the broker stops reading its socket), and none of them is lost;
    another publisher is not slowed. (Only a lower bound on time is asserted.)"""
    broker = broker_factory("", env={"FERROMQ_LIMITS_PUBLISH_RATE_MESSAGES": "100"})
    topic = unique("throttle")
    sub = connect(broker, protocol=5)
    sub.subscribe(topic, 1)
    fast = raw_connect(broker, "fast", protocol=5)
    t0 = time.monotonic()
    for i in range(500):
        fast.publish(topic, i.to_bytes(4, "big"), qos=0)
    # Another client is served at once, while the first is throttled.
    other = connect(broker, protocol=4)
    other.publish(topic, b"other", qos=1)
    sub.wait_messages(1, where=lambda m: m.payload == b"other")
    assert len(sub.received()) < 400, "the throttled client cannot have got most through yet"
    got = sub.wait_messages(501, timeout=30)
    elapsed = time.monotonic() - t0
    numbers = [int.from_bytes(m.payload, "big") for m in got if m.payload != b"other"]
    assert numbers == list(range(500)), "nothing dropped, order kept"
    # 100 of burst, then 400 at 100/s.
    assert elapsed >= 3.5, elapsed


def test_retained_budget(broker_factory):
    """limits.retained_max_bytes: a retained message that would exceed it is neither
    stored nor routed: v5 PUBACK / PUBREC 0x97 (Quota exceeded), 3.1.1 acknowledged and
    dropped; one log line. Replacing with a smaller message and clearing still work."""
    # $SYS topics are retained messages too: keep them out of this small budget.
    broker = broker_factory("sys_interval 0\n", env={"FERROMQ_LIMITS_RETAINED_MAX_BYTES": "4000"})
    watcher = connect(broker)
    watcher.subscribe("keep/#", 1)
    c = raw_connect(broker, "retainer", protocol=5)
    pid = c.publish("keep/a", b"a" * 1500, qos=1, retain=True)
    assert c.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == 0
    pid = c.publish("keep/b", b"b" * 1500, qos=1, retain=True)
    assert c.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == 0
    pid = c.publish("keep/c", b"c" * 1500, qos=1, retain=True)
    assert c.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == 0x97
    pid = c.publish("keep/c", b"c" * 1500, qos=2, retain=True)
    assert c.expect(PUBREC, where=lambda p: p.packet_id == pid).reason_code == 0x97
    v3 = raw_connect(broker, "retainer3", protocol=4)
    pid = v3.publish("keep/d", b"d" * 1500, qos=1, retain=True)
    assert v3.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == 0
    # Replacing keep/a with a smaller message fits; clearing keep/b frees room.
    pid = c.publish("keep/a", b"A" * 100, qos=1, retain=True)
    assert c.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == 0
    pid = c.publish("keep/b", b"", qos=1, retain=True)
    assert c.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == 0
    pid = c.publish("keep/e", b"e" * 1500, qos=1, retain=True)
    assert c.expect(PUBACK, where=lambda p: p.packet_id == pid).reason_code == 0
    # Only the accepted messages were routed; only they are retained.
    watcher.wait_messages(5)
    quiet()
    assert [m.topic for m in watcher.received()] == ["keep/a", "keep/b", "keep/a", "keep/b", "keep/e"]
    late = connect(broker)
    late.subscribe("keep/#", 1)
    late.wait_messages(2)
    quiet()
    assert sorted(m.topic for m in late.received()) == ["keep/a", "keep/e"]
    assert "limits.retained_max_bytes reached" in broker.log()


def test_topic_length_limit(broker_factory):
    """mqtt.max_topic_length 64: a longer PUBLISH topic closes the connection (v5:
    DISCONNECT 0x90); a longer filter gets SUBACK 0x8F (3.1.1: 0x80)."""
    broker = broker_factory("", env={"FERROMQ_MQTT_MAX_TOPIC_LENGTH": "64"})
    long_topic = "t/" + "x" * 80
    v5 = raw_connect(broker, "len5", protocol=5)
    assert v5.subscribe(long_topic, 1) == [0x8F]
    v3 = raw_connect(broker, "len3", protocol=4)
    assert v3.subscribe(long_topic, 1) == [0x80]
    assert v5.subscribe("t/" + "x" * 62, 1) == [1]
    v5.publish(long_topic, b"x", qos=1)
    d = v5.wait_closed()
    assert d is not None and d.reason_code == 0x90, d


def test_worker_threads_and_descriptor_table(broker_factory):
    """limits.worker_threads 1 runs the broker on one runtime worker thread (brokers
    side by side on one host); max_connections 3000 grows the descriptor table to
    3,100 slots at start, so accepting the 256th, 512th, ... connection never waits
    for the kernel to grow it. The broker serves clients as usual."""
    broker = broker_factory("max_connections 3000\n", env={"FERROMQ_LIMITS_WORKER_THREADS": "1"})
    pid = broker.proc.pid
    workers = [t for t in os.listdir(f"/proc/{pid}/task")
               if open(f"/proc/{pid}/task/{t}/comm").read().strip() == "tokio-rt-worker"]
    assert len(workers) == 1, f"runtime worker threads: {len(workers)}"
    assert int(proc_status(pid, "FDSize")) >= 3100
    assert _connects(broker)
