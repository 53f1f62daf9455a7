"""Hostile and broken clients: each is refused or cut off with a log line naming its
address, a well-behaved pair of clients keeps its service meanwhile, and the broker's
memory (VmRSS from /proc/PID/status, sampled throughout) stays under a stated bound.

| case | bound |
|---|---|
| 10,000 sockets that send nothing | `IDLE_RSS_BOUND` |
| 256 MB / oversized Remaining Length headers | `HEADER_RSS_BOUND` |
| a client subscribing a million times | `SUBSCRIBE_RSS_BOUND` |
| a subscriber that reads nothing on a busy topic | `SLOW_RSS_BOUND` |
| HTTP requests to the MQTT port | `HTTP_RSS_BOUND` |

Each test prints the peak RSS it saw (`pytest -s` shows it), for the record in
docs/ARCHITECTURE.md. The bounds are generous multiples of what was measured so a
slower machine does not fail them, yet far below what an unbounded broker would use.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import threading
import time

import pytest

from conftest import wait_for
from mqttclient import (PUBLISH, SUBACK, RawClient, connect, encode_connect, encode_subscribe, enc_varint,
                        unique)

MB = 1024 * 1024
# Measured on the 2-core CI machine (debug build): 46, 6.5, 7.3, 27 and 6.4 MiB.
IDLE_RSS_BOUND = 200 * MB
HEADER_RSS_BOUND = 64 * MB
SUBSCRIBE_RSS_BOUND = 64 * MB
SLOW_RSS_BOUND = 100 * MB
HTTP_RSS_BOUND = 64 * MB

pytestmark = pytest.mark.skipif(os.environ.get("FERROMQ_TEST_BROKER") == "mosquitto",
                                reason="ferromq's limits and log lines")


def rss(pid: int) -> int:
    """The process's resident set size in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's RSS every 50 ms in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = rss(pid)
        self.baseline = self.peak
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self, label: str, bound: int) -> int:
        self._stop.set()
        self._t.join()
        print(f"\n[{label}] broker RSS: baseline {self.baseline / MB:.1f} MiB, "
              f"peak {self.peak / MB:.1f} MiB (bound {bound / MB:.0f} MiB)")
        assert self.peak < bound, f"{label}: broker RSS peaked at {self.peak / MB:.1f} MiB > {bound / MB:.0f} MiB"
        return self.peak


class Witness:
    """A well-behaved publisher/subscriber pair: `round_trip` proves the broker still
    serves them (QoS 1 out and in)."""

    def __init__(self, broker):
        self.topic = unique("witness")
        self.sub = connect(broker, protocol=4)
        self.sub.subscribe(self.topic, 1)
        self.pub = connect(broker, protocol=5)
        self.n = 0

    def round_trip(self, context: str, timeout: float = 10.0):
        self.n += 1
        payload = f"{context} #{self.n}".encode()
        self.pub.publish(self.topic, payload, qos=1, timeout=timeout)
        self.sub.wait_messages(1, timeout, where=lambda m: m.payload == payload)


def raise_nofile(needed: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files; hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b""


def test_ten_thousand_idle_sockets(broker_factory):
    """10,000 sockets that connect and send nothing: each is closed after
    mqtt.connect_timeout (here 3 s) with a log line naming its address; a client that
    does connect is served meanwhile."""
    n = 10_000
    raise_nofile(n + 500)
    broker = broker_factory("", env={"FERROMQ_MQTT_CONNECT_TIMEOUT": "3s"})
    witness = Witness(broker)
    sampler = RssSampler(broker.proc.pid)
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((broker.host, broker.port), timeout=10)
            s.setblocking(False)
            socks.append(s)
        witness.round_trip("10,000 idle sockets open")
        open_rss = rss(broker.proc.pid)
        # All of them are closed by the broker, none by us (poll: the fds are > 1024).
        poller = select.poll()
        by_fd = {s.fileno(): s for s in socks}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        closed = set()
        deadline = time.monotonic() + 60
        while len(closed) < n and time.monotonic() < deadline:
            for fd, _ in poller.poll(500):
                if closed_by_peer(by_fd[fd]):
                    closed.add(fd)
                    poller.unregister(fd)
        assert len(closed) == n, f"{n - len(closed)} idle sockets still open after 60 s"
        witness.round_trip("10,000 idle sockets closed")
    finally:
        for s in socks:
            s.close()
    peak = sampler.stop("10,000 idle sockets", IDLE_RSS_BOUND)
    print(f"  RSS with all 10,000 open: {open_rss / MB:.1f} MiB")
    log = broker.log()
    assert log.count("no CONNECT within the connect timeout") >= n, "one log line per socket"
    assert peak > 0


def test_huge_remaining_length_headers(broker_factory):
    """The largest Remaining Length MQTT can encode (`FF FF FF 7F`, 256 MB) and a
    5-byte one (what a 2 GB length would need; malformed) are refused from the fixed
    header: before CONNECT, and after it (v5 gets DISCONNECT 0x95 / 0x81). Nothing is
    allocated for the body, however many clients try."""
    broker = broker_factory("")
    witness = Witness(broker)
    sampler = RssSampler(broker.proc.pid)
    headers = [bytes.fromhex("30FFFFFF7F"), bytes.fromhex("10FFFFFF7F"), bytes.fromhex("30FFFFFFFF7F"),
               bytes.fromhex("82FFFFFF7F")]
    for round_no in range(50):
        clients = []
        for i, header in enumerate(headers):
            c = RawClient(broker, 5)
            if header[0] != 0x10:
                c.connect(unique("big"))
            c.send(header + b"\0" * 1024)
            clients.append(c)
        for c in clients:
            d = c.wait_closed()
            if d is not None:
                assert d.reason_code in (0x95, 0x81), d
            c.close()
    witness.round_trip("oversized headers")
    sampler.stop("256 MB Remaining Length headers", HEADER_RSS_BOUND)
    assert "packet too large" in broker.log().lower() or "0x95" in broker.log()


def test_client_subscribing_a_million_times(broker_factory):
    """One client sends 1,000,000 distinct filters (1,000 SUBSCRIBEs of 1,000): the
    first limits.max_subscriptions_per_client (1000) are granted, every other one gets
    0x97 (Quota exceeded; 0x80 for 3.1.1), one log line names the client, memory stays
    bounded and the witness is served throughout."""
    broker = broker_factory("")
    witness = Witness(broker)
    sampler = RssSampler(broker.proc.pid)
    c = RawClient(broker, 5, timeout=60)
    c.connect("greedy")
    granted = refused = 0
    for chunk in range(20):
        # 50 SUBSCRIBEs of 1,000 filters, then their 50 SUBACKs.
        for p in range(chunk * 50, chunk * 50 + 50):
            c.send(encode_subscribe(p + 1, [(f"greedy/{p}/{i}", 1) for i in range(1000)], 5))
        for _ in range(50):
            codes = c.expect(SUBACK, timeout=60).reason_codes
            granted += codes.count(1)
            refused += codes.count(0x97)
    assert (granted, refused) == (1000, 999_000)
    witness.round_trip("a million subscriptions")
    v3 = RawClient(broker, 4)
    v3.connect("greedy3")
    v3.send(encode_subscribe(1, [(f"g3/{i}", 0) for i in range(1500)], 4))
    codes = v3.expect(SUBACK).reason_codes
    assert codes.count(0) == 1000 and codes.count(0x80) == 500
    sampler.stop("1,000,000 subscriptions", SUBSCRIBE_RSS_BOUND)
    assert broker.log().count("max_subscriptions_per_client reached") == 2


def test_subscriber_that_reads_nothing(broker_factory):
    """A subscriber that never reads, on a topic carrying 200 MB: its queue is bounded
    (max_queued_messages 1000, max_queued_bytes 10 MB here), the excess is dropped for
    it alone, another subscriber of the same topic receives every message, and memory
    stays bounded."""
    broker = broker_factory("max_queued_messages 1000\nmax_queued_bytes 10485760\n")
    witness = Witness(broker)
    topic = unique("busy")
    stuck = RawClient(broker, 4)
    stuck.connect("stuck")
    stuck.send(encode_subscribe(1, [(topic, 1)], 4))
    # It reads the SUBACK and nothing else ever again.
    stuck.expect(SUBACK)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    good = connect(broker, protocol=5)
    good.subscribe(topic, 1)
    pub = connect(broker, protocol=5)
    sampler = RssSampler(broker.proc.pid)
    payload = b"x" * 10_000
    n = 20_000
    for i in range(n):
        info = pub.publish(topic, payload + i.to_bytes(4, "big"), qos=1, wait=False)
        if i % 200 == 199:
            info.wait_for_publish(30)
            # Closed loop on the good subscriber: its own queue never fills.
            good.wait_messages(i - 400, timeout=30)
    good.wait_messages(n, timeout=60)
    assert [int.from_bytes(m.payload[-4:], "big") for m in good.received()] == list(range(n))
    witness.round_trip("a subscriber that reads nothing")
    sampler.stop("subscriber reading nothing, 200 MB published", SLOW_RSS_BOUND)
    log = broker.log()
    assert "client_id=stuck" in log and "session queue full" in log
    assert log.count("session queue full") < 10, "rate-limited log line"
    stuck.close()


def test_http_request_to_mqtt_port(broker_factory):
    """An HTTP request is not MQTT: the first byte (`G`, packet type 4) is not CONNECT, so
    the connection is closed at once, with a log line naming the address; nothing is
    answered."""
    broker = broker_factory("")
    witness = Witness(broker)
    sampler = RssSampler(broker.proc.pid)
    request = (b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for _ in range(200):
        s = socket.create_connection((broker.host, broker.port), timeout=10)
        s.sendall(request)
        assert s.recv(4096) == b"", "no answer, just a close"
        port = s.getsockname()[1]
        s.close()
    wait_for(lambda: f"127.0.0.1:{port}" in broker.log(), what="a log line naming the address")
    assert "first packet is not CONNECT" in broker.log()
    witness.round_trip("HTTP requests")
    sampler.stop("HTTP requests", HTTP_RSS_BOUND)
