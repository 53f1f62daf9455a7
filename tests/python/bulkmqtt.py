"""A minimal raw MQTT 3.1.1 client for bulk traffic (tens of thousands of messages).

paho-mqtt handles one message per callback on its network thread and tops out at a
few thousand messages a second; the bounded-memory tests and the retained benchmark
move 5,000 to 1,000,000 messages, so they build packets by hand, write them in large
batches and parse replies in bulk. Only what those tests need: CONNECT, PUBLISH
(QoS 0/1, retain), PUBACK, SUBSCRIBE, DISCONNECT. Every wait has a deadline.
"""

from __future__ import annotations

import socket
import struct
import time


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return struct.pack(">H", len(s)) + s


def _frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int = 0, retain: bool = False, pid: int = 0) -> bytes:
    body = _str(topic.encode()) + (struct.pack(">H", pid) if qos else b"") + payload
    return _frame(0x30 | (qos << 1) | int(retain), body)


class BulkClient:
    """One MQTT 3.1.1 connection. `received` holds (topic, payload, retain) of every
    PUBLISH read so far; QoS 1 PUBLISHes are acknowledged as they are read."""

    def __init__(self, host: str, port: int, client_id: str, clean: bool = True,
                 timeout: float = 30.0, keep: bool = True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.keep = keep
        self.received: list[tuple[str, bytes, bool]] = []
        self.count = 0
        self.acks: set[int] = set()
        self.subacks: dict[int, bytes] = {}
        flags = 0x02 if clean else 0x00
        body = _str(b"MQTT") + bytes([4, flags]) + struct.pack(">H", 0) + _str(client_id.encode())
        self.sock.sendall(_frame(0x10, body))
        first, data = self._next_packet(time.monotonic() + timeout)
        kind = first >> 4
        assert kind == 2 and data[1] == 0, f"CONNACK refused: {kind} {bytes(data)!r}"
        self.session_present = bool(data[0] & 1)

    def _next_packet(self, deadline: float):
        while True:
            pkt = self._parse_one()
            if pkt is not None:
                return pkt
            self._fill(deadline)

    def _fill(self, deadline: float):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out reading from the broker")
        self.sock.settimeout(left)
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        self.buf += chunk

    def _parse_one(self):
        buf = self.buf
        if len(buf) < 2:
            return None
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return None
            b = buf[i]
            n += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if len(buf) < i + n:
            return None
        first = buf[0]
        data = bytes(buf[i:i + n])
        del buf[:i + n]
        return first, data

    def _handle(self, first: int, data: bytes, replies: list):
        kind = first >> 4
        if kind == 3:
            qos = (first >> 1) & 3
            tlen = struct.unpack(">H", data[:2])[0]
            at = 2 + tlen
            if qos:
                pid = struct.unpack(">H", data[at:at + 2])[0]
                at += 2
                replies.append(_frame(0x40, struct.pack(">H", pid)))
            self.count += 1
            if self.keep:
                self.received.append((data[2:2 + tlen].decode(), data[at:], bool(first & 1)))
        elif kind == 4:
            self.acks.add(struct.unpack(">H", data[:2])[0])
        elif kind == 9:
            self.subacks[struct.unpack(">H", data[:2])[0]] = data[2:]
        return kind

    def pump(self, until, timeout: float = 60.0):
        """Reads and handles packets until `until()` is true."""
        deadline = time.monotonic() + timeout
        while True:
            self._process()
            if until():
                return
            self._fill(deadline)

    def _process(self):
        """Handles every complete packet in the buffer and sends the acknowledgements."""
        replies: list[bytes] = []
        while True:
            pkt = self._parse_one()
            if pkt is None:
                break
            self._handle(pkt[0], pkt[1], replies)
        if replies:
            self.sock.sendall(b"".join(replies))

    def publish_many(self, packets, qos1_ids: list[int] | None = None, timeout: float = 120.0,
                     batch: int = 2000):
        """Writes `packets` in batches; with `qos1_ids`, waits for all their PUBACKs."""
        chunk: list[bytes] = []
        for p in packets:
            chunk.append(p)
            if len(chunk) >= batch:
                self.sock.sendall(b"".join(chunk))
                chunk.clear()
                # Keep the broker's replies from filling our receive buffer.
                self.sock.setblocking(False)
                try:
                    while True:
                        got = self.sock.recv(1 << 20)
                        if not got:
                            break
                        self.buf += got
                except BlockingIOError:
                    pass
                finally:
                    self.sock.setblocking(True)
                self._process()
        if chunk:
            self.sock.sendall(b"".join(chunk))
        if qos1_ids:
            want = set(qos1_ids)
            self.pump(lambda: want <= self.acks, timeout)

    def subscribe(self, topic_filter: str, qos: int = 1, pid: int = 1, timeout: float = 30.0):
        body = struct.pack(">H", pid) + _str(topic_filter.encode()) + bytes([qos])
        self.sock.sendall(_frame(0x82, body))
        self.pump(lambda: pid in self.subacks, timeout)
        return self.subacks[pid]

    def disconnect(self):
        try:
            self.sock.sendall(b"\xe0\x00")
        finally:
            self.sock.close()

    def close(self):
        self.sock.close()


def proc_status(pid: int, field: str) -> str:
    """The value of `field` (e.g. "VmRSS", "FDSize") in /proc/PID/status, as written."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no {field} line")


def vm_rss_kib(pid: int) -> int:
    """The resident set size of process `pid` in KiB (Linux /proc)."""
    return int(proc_status(pid, "VmRSS").split()[0])
