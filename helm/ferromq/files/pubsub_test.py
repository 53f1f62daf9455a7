"""`helm test` for ferromq: publish and subscribe through the client Service.

Standard library only (the test pod runs a stock Python image): two MQTT 3.1.1
connections to HOST:PORT (argv, default $FERROMQ_TEST_HOST / 1883). The subscriber
subscribes with QoS 1; the publisher sends one QoS 1 message and waits for PUBACK;
the subscriber must receive it within the deadline. Through a Service the two
connections may land on different nodes, so this also crosses the cluster. Exit 0 on
success, 1 with the reason on stderr otherwise. tests/deploy runs this file against a
real broker too.
"""

import os
import socket
import struct
import sys
import time
import uuid

DEADLINE = float(os.environ.get("FERROMQ_TEST_DEADLINE", "30"))


def encode_len(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def packet(kind, body):
    return bytes([kind]) + encode_len(len(body)) + body


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return buf


def read_packet(sock):
    head = read_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:
        b = read_exact(sock, 1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return head, read_exact(sock, length)


def connect(host, port, client_id):
    sock = socket.create_connection((host, port), timeout=DEADLINE)
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + utf8(client_id)
    sock.sendall(packet(0x10, body))
    head, body = read_packet(sock)
    if head >> 4 != 2 or len(body) < 2 or body[1] != 0:
        raise RuntimeError(f"CONNACK refused: {body.hex()}")
    return sock


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FERROMQ_TEST_HOST", "127.0.0.1")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 1883
    run = uuid.uuid4().hex[:12]
    topic = f"ferromq/helm-test/{run}"
    payload = f"hello from helm test {run}".encode()

    sub = connect(host, port, f"helm-test-sub-{run}")
    sub.sendall(packet(0x82, struct.pack("!H", 1) + utf8(topic) + bytes([1])))
    head, body = read_packet(sub)
    if head >> 4 != 9 or body[2:] != bytes([1]):
        raise RuntimeError(f"SUBACK unexpected: {body.hex()}")

    pub = connect(host, port, f"helm-test-pub-{run}")
    pub.sendall(packet(0x32, utf8(topic) + struct.pack("!H", 7) + payload))
    head, body = read_packet(pub)
    if head >> 4 != 4 or body[:2] != struct.pack("!H", 7):
        raise RuntimeError(f"PUBACK unexpected: {head:#x} {body.hex()}")
    pub.sendall(bytes([0xE0, 0]))
    pub.close()

    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        head, body = read_packet(sub)
        if head >> 4 != 3:
            continue
        tlen = struct.unpack("!H", body[:2])[0]
        got_topic = body[2 : 2 + tlen].decode()
        rest = body[2 + tlen :]
        qos = (head >> 1) & 3
        if qos:
            pid, rest = rest[:2], rest[2:]
            sub.sendall(bytes([0x40, 2]) + pid)
        if got_topic == topic and rest == payload:
            sub.sendall(bytes([0xE0, 0]))
            print(f"ok: published and received {topic} through {host}:{port}")
            return 0
    raise RuntimeError("message not received before the deadline")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the test's verdict, with the reason
        print(f"helm test failed: {e}", file=sys.stderr)
        sys.exit(1)
