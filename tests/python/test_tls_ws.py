"""TLS and WebSocket listeners with real clients.

* `mosquitto_pub` / `mosquitto_sub` (Debian's mosquitto-clients, OpenSSL) against an
  `mqtts` listener with `--cafile`, and with `--cert`/`--key` under
  `require_certificate true`: no certificate, an expired one, one from another CA are
  refused; a good one is accepted and, with `use_identity_as_username`, its CN shows up
  as the username in the broker's connect log line.
* paho-mqtt over `ws` and `wss` (`transport="websockets"`, path `/mqtt`, `tls_set`).
* Refusals that must not disturb anyone else: a WebSocket upgrade without the `mqtt`
  subprotocol, plaintext MQTT to the TLS port.
* Certificate rotation: SIGHUP with a connected client that stays connected while a new
  client sees the new certificate.
* A missing certificate file at start: exit 78 naming the file.

Certificates come from `gen-test-certs` (rcgen, tests/src/certs.rs), made per test.
These tests are ferromq-only: with FERROMQ_TEST_BROKER=mosquitto they are skipped
(the fixture rewrites listeners).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import Endpoint, ferromq_bin, wait_for
from mqttclient import Client, both_protocols, encode_connect, unique

pytestmark = pytest.mark.skipif(os.environ.get("FERROMQ_TEST_BROKER", "ferromq") != "ferromq",
                                reason="TLS/WebSocket listeners are configured the ferromq way")

HAVE_CLIENTS = bool(shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub"))
needs_clients = pytest.mark.skipif(not HAVE_CLIENTS, reason="mosquitto-clients is not installed")
TIMEOUT = 15


def tls_block(certs, extra: str = "", protocol: str = "") -> str:
    return (f"listener 0 127.0.0.1\n{protocol}cafile {certs.cert('ca')}\ncertfile {certs.cert('server')}\n"
            f"keyfile {certs.key('server')}\n{extra}")


def plain_and_tls(certs, extra: str = "") -> str:
    return "listener 0 127.0.0.1\nsys_interval 0\n" + tls_block(certs, extra)


def localhost(ep: Endpoint) -> Endpoint:
    """The endpoint by name, so OpenSSL checks the certificate's `localhost` name."""
    return Endpoint("localhost", ep.port)


def mosquitto(tool: str, ep: Endpoint, *args: str) -> list[str]:
    return [tool, "-h", "localhost", "-p", str(ep.port), *args]


def pub(ep: Endpoint, topic: str, message: str, *args: str) -> subprocess.CompletedProcess:
    cmd = mosquitto("mosquitto_pub", ep, "-t", topic, "-m", message, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)


def connect_log_line(broker, client_id: str) -> str:
    return wait_for(lambda: next((l for l in broker.log().splitlines()
                                  if "client connected" in l and f"client_id={client_id} " in l), None),
                    TIMEOUT, what=f"the connect log line of {client_id}")


@needs_clients
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_clients_over_mqtts(broker_factory, certs, version):
    """The usual TLS tutorial: server certificate checked against `--cafile`."""
    b = broker_factory(plain_and_tls(certs))
    ep = b.endpoint("mqtts")
    ca = ["--cafile", certs.cert("ca"), "-V", version]
    sub = subprocess.Popen(mosquitto("mosquitto_sub", ep, "-t", "tls/hello", "-C", "1", "-W", str(TIMEOUT),
                                     "-i", "tls-sub", *ca), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        connect_log_line(b, "tls-sub")
        # The subscription is in place once the broker has a subscriber for the topic:
        # publish until the subscriber exits with the message (-C 1).
        def delivered():
            done = pub(ep, "tls/hello", "over TLS", *ca)
            assert done.returncode == 0, done.stderr
            try:
                sub.wait(0.3)
                return True
            except subprocess.TimeoutExpired:
                return False

        wait_for(delivered, TIMEOUT, what="mosquitto_sub to receive over TLS")
        out, err = sub.communicate(timeout=TIMEOUT)
        assert sub.returncode == 0, err
        assert out.splitlines() == ["over TLS"]
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    # Without the CA the client refuses the server certificate.
    done = pub(ep, "tls/hello", "untrusted", "-V", version, "--cafile", certs.cert("other-ca"))
    assert done.returncode != 0


@needs_clients
def test_mosquitto_clients_mutual_tls(broker_factory, certs):
    """require_certificate + use_identity_as_username, as in mosquitto.conf(5)."""
    b = broker_factory(plain_and_tls(certs, "require_certificate true\nuse_identity_as_username true\n"))
    ep = b.endpoint("mqtts")
    topic = unique("mtls")
    good = ["--cafile", certs.cert("ca"), "--cert", certs.cert("client"), "--key", certs.key("client")]
    sub = subprocess.Popen(mosquitto("mosquitto_sub", ep, "-t", topic, "-C", "1", "-W", str(TIMEOUT),
                                     "-i", "mtls-sub", "-q", "1", *good),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = connect_log_line(b, "mtls-sub")
        assert 'username="sensor-1"' in line, line

        # Refused: no certificate, an expired one, one from another CA. Each exits
        # non-zero, and its message never reaches the subscriber.
        for name, extra in [
            ("no certificate", []),
            ("expired", ["--cert", certs.cert("expired"), "--key", certs.key("expired")]),
            ("other CA", ["--cert", certs.cert("other-client"), "--key", certs.key("other-client")]),
        ]:
            done = pub(ep, topic, f"from {name}", "-q", "1", "--cafile", certs.cert("ca"), *extra)
            assert done.returncode != 0, f"{name}: accepted\n{done.stdout}{done.stderr}"
        refusals = wait_for(lambda: [l for l in b.log().splitlines() if "TLS handshake failed" in l][2:] and
                            [l for l in b.log().splitlines() if "TLS handshake failed" in l],
                            TIMEOUT, what="three refusal log lines")
        assert len(refusals) == 3, "\n".join(refusals)
        assert any("no certificates" in l for l in refusals)
        assert any("expired" in l for l in refusals)
        assert any("UnknownIssuer" in l for l in refusals)

        # The good certificate is accepted; its message is the first the subscriber sees.
        done = pub(ep, topic, "from sensor-2", "-q", "1", "-i", "mtls-pub", "--cafile", certs.cert("ca"),
                   "--cert", certs.cert("client2"), "--key", certs.key("client2"))
        assert done.returncode == 0, done.stderr
        out, err = sub.communicate(timeout=TIMEOUT)
        assert out.splitlines() == ["from sensor-2"], err
        assert 'username="sensor-2"' in connect_log_line(b, "mtls-pub")
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def ws_config(certs) -> str:
    return ("listener 0 127.0.0.1\nsys_interval 0\nlistener 0 127.0.0.1\nprotocol websockets\n"
            f"listener 0 127.0.0.1\nprotocol websockets\ncertfile {certs.cert('server')}\n"
            f"keyfile {certs.key('server')}\n")


@both_protocols
@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_paho_over_websockets(broker_factory, certs, kind, proto):
    b = broker_factory(ws_config(certs))
    ep = b.endpoint(kind)
    tls = {"ca_certs": certs.cert("ca")} if kind == "wss" else None
    sub = Client(ep, protocol=proto, transport="websockets", tls=tls)
    pub_ = Client(ep, protocol=proto, transport="websockets", tls=tls)
    plain = Client(b, protocol=proto)
    try:
        for c in (sub, pub_, plain):
            c.connect()
        topic = unique(kind)
        assert sub.subscribe(topic, 1) == [1]
        pub_.publish(topic, b"over " + kind.encode(), qos=1)
        plain.publish(topic, b"from tcp", qos=1)
        msgs = sub.wait_messages(2, topic=topic)
        assert sorted(m.payload for m in msgs) == sorted([b"over " + kind.encode(), b"from tcp"])
        # A large packet spans several WebSocket frames/reads.
        big = os.urandom(300_000)
        pub_.publish(topic, big, qos=1)
        assert sub.wait_messages(3, topic=topic)[2].payload == big
    finally:
        for c in (sub, pub_, plain):
            c.stop()


def http_upgrade(port: int, protocol: str | None, tls_ca: str | None = None) -> str:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    if tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca)
        raw = ctx.wrap_socket(raw, server_hostname="localhost")
    with raw as s:
        proto = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
        s.sendall(("GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   f"{proto}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        return head.decode(errors="replace")


def test_websocket_upgrade_without_mqtt_subprotocol_is_refused(broker_factory, certs):
    b = broker_factory(ws_config(certs))
    ws, wss = b.endpoint("ws"), b.endpoint("wss")
    survivor = Client(ws, transport="websockets")
    survivor.connect()
    try:
        assert http_upgrade(ws.port, None).startswith("HTTP/1.1 400")
        assert http_upgrade(wss.port, "chat", tls_ca=certs.cert("ca")).startswith("HTTP/1.1 400")
        wait_for(lambda: sum("WebSocket upgrade refused" in l for l in b.log().splitlines()) == 2, TIMEOUT,
                 what="two refusal log lines")
        assert "addr=127.0.0.1:" in next(l for l in b.log().splitlines() if "WebSocket upgrade refused" in l)
        head = http_upgrade(ws.port, "mqtt")
        assert head.startswith("HTTP/1.1 101"), head
        assert "sec-websocket-protocol: mqtt" in head.lower(), head
        topic = unique("survivor")
        survivor.subscribe(topic, 1)
        survivor.publish(topic, b"still here", qos=1)
        survivor.wait_messages(1, topic=topic)
    finally:
        survivor.stop()


def test_plaintext_to_tls_port_is_refused_while_tls_client_keeps_working(broker_factory, certs):
    b = broker_factory(plain_and_tls(certs))
    ep = b.endpoint("mqtts")
    tls_client = Client(ep, tls={"ca_certs": certs.cert("ca")})
    tls_client.connect()
    try:
        with socket.create_connection(("127.0.0.1", ep.port), timeout=TIMEOUT) as s:
            local = "%s:%d" % s.getsockname()
            s.sendall(encode_connect("plaintext", 4))
            try:
                answer = s.recv(16)
            except ConnectionResetError:  # closed with our CONNECT unread: a reset
                answer = b""
            assert answer == b"", "the broker answered plaintext on its TLS port"
        wait_for(lambda: any("sent to a TLS listener" in l and f"addr={local}" in l for l in b.log().splitlines()),
                 TIMEOUT, what="a log line naming the plaintext client")
        topic = unique("tls")
        tls_client.subscribe(topic, 1)
        tls_client.publish(topic, b"unaffected", qos=1)
        assert tls_client.wait_messages(1, topic=topic)[0].payload == b"unaffected"
    finally:
        tls_client.stop()


@needs_clients
def test_sighup_reloads_certificates_and_keeps_clients(broker_factory, certs):
    b = broker_factory(plain_and_tls(certs))
    ep = b.endpoint("mqtts")
    old = Client(ep, tls={"ca_certs": certs.cert("ca")})
    old.connect()
    try:
        topic = unique("rotate")
        old.subscribe(topic, 1)
        # Rotate to a certificate from another CA, then SIGHUP.
        shutil.copy(certs.cert("other-server"), certs.cert("server"))
        shutil.copy(certs.key("other-server"), certs.key("server"))
        b.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("TLS certificates reloaded" in l and "SIGHUP" in l for l in b.log().splitlines()),
                 TIMEOUT, what="the reload log line")
        # A new client sees the new certificate: the new CA works, the old one does not.
        done = pub(ep, topic, "after rotation", "-q", "1", "--cafile", certs.cert("other-ca"))
        assert done.returncode == 0, done.stderr
        done = pub(ep, topic, "old CA", "-q", "1", "--cafile", certs.cert("ca"))
        assert done.returncode != 0, "the old CA still verifies the server"
        # The client connected before the rotation is still connected and served.
        assert old.wait_messages(1, topic=topic)[0].payload == b"after rotation"
        assert old.is_connected() and not old.disconnects
        assert b.alive()
    finally:
        old.stop()


def test_missing_certificate_file_stops_the_broker_naming_it(tmp_path, certs):
    missing = tmp_path / "nowhere" / "server.pem"
    conf = tmp_path / "ferromq.conf"
    conf.write_text(f"listener 0 127.0.0.1\ncertfile {missing}\nkeyfile {certs.key('server')}\n")
    ready = tmp_path / "ready.json"
    done = subprocess.run([str(ferromq_bin()), "-c", str(conf), "--ready-file", str(ready),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 78, done.stderr
    assert str(missing) in done.stderr, done.stderr
    assert not ready.exists()
