"""The runtime image (ferromq:local from deploy/image/build-local.sh), run with Docker.

Ports are published on 127.0.0.1 only and every client talks to 127.0.0.1. Each test
removes its containers (by id) and volumes.
"""

import json
import shutil
import socket
import struct
import subprocess
import time
import uuid

import pytest

from .deployutil import CHART

pytestmark = pytest.mark.usefixtures("image")


def docker(*args, timeout=60, check=True):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr}"
    return r


class Containers:
    def __init__(self):
        self.ids, self.volumes = [], []

    def run(self, *args, volume=None):
        extra = []
        if volume:
            extra = ["-v", f"{volume}:/data"]
        cid = docker(
            "run", "-d", "-p", "127.0.0.1::1883", "-p", "127.0.0.1::8080", "--health-interval", "1s",
            *extra, *args, "ferromq:local",
        ).stdout.strip()
        self.ids.append(cid)
        return cid

    def volume(self):
        name = f"ferromq-test-{uuid.uuid4().hex[:10]}"
        docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def cleanup(self):
        for cid in self.ids:
            docker("rm", "-f", "-v", cid, check=False)
        for v in self.volumes:
            docker("volume", "rm", "-f", v, check=False)


@pytest.fixture
def containers():
    c = Containers()
    yield c
    c.cleanup()


def port(cid, container_port):
    out = docker("port", cid, f"{container_port}/tcp").stdout.strip().splitlines()[0]
    return int(out.rsplit(":", 1)[1])


def wait_for(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def health(cid):
    return json.loads(docker("inspect", "--format", "{{json .State}}", cid).stdout)


def mqtt_ready(p):
    try:
        with socket.create_connection(("127.0.0.1", p), timeout=1) as s:
            # MQTT 3.1.1 CONNECT, clean session, client id "probe"
            body = b"\x00\x04MQTT\x04\x02\x00\x0a\x00\x05probe"
            s.sendall(bytes([0x10, len(body)]) + body)
            return s.recv(4) == b"\x20\x02\x00\x00"
    except OSError:
        return False


def test_image_metadata():
    cfg = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", "ferromq:local").stdout)
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["/usr/local/bin/ferromq"]
    assert set(cfg["ExposedPorts"]) == {"1883/tcp", "8883/tcp", "8080/tcp", "8083/tcp", "7946/tcp"}
    assert "/data" in cfg["Volumes"]
    assert cfg["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/ferromq", "ctl", "health"]
    assert "FERROMQ_PERSISTENCE_PATH=/data" in cfg["Env"]


def test_runs_as_non_root_and_turns_healthy(containers):
    cid = containers.run()
    state = wait_for(
        lambda: (s := health(cid)) and s["Health"]["Status"] in ("healthy", "unhealthy") and s,
        "a health verdict",
    )
    assert state["Health"]["Status"] == "healthy", state["Health"]
    rows = docker("top", cid, "-o", "uid,pid").stdout.strip().splitlines()[1:]
    uids = [row.split()[0] for row in rows]
    assert uids == ["10001"], rows
    # No shell in the image: nothing but ferromq to exec.
    r = docker("exec", cid, "/bin/sh", "-c", "true", check=False)
    assert r.returncode != 0
    # /healthz and /readyz from outside, as Kubernetes probes and Compose see them.
    import urllib.request

    http = port(cid, 8080)
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=5) as resp:
            assert resp.status == 200


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="needs mosquitto-clients (apt)")
def test_mosquitto_clients_pub_sub_through_published_port(containers):
    cid = containers.run()
    p = port(cid, 1883)
    wait_for(lambda: mqtt_ready(p), "the MQTT listener")
    for version in ("mqttv311", "mqttv5"):
        topic = f"image/test/{uuid.uuid4().hex[:8]}"
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(p), "-V", version, "-q", "1", "-t", topic, "-C", "1", "-W", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            # Publish until the subscriber (whose SUBACK we cannot see) has the message.
            deadline = time.monotonic() + 20
            while sub.poll() is None and time.monotonic() < deadline:
                subprocess.run(
                    ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(p), "-V", version, "-q", "1", "-t", topic, "-m", "hello"],
                    check=True, timeout=10,
                )
                try:
                    sub.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            out, err = sub.communicate(timeout=5)
        finally:
            if sub.poll() is None:
                sub.kill()
        assert sub.returncode == 0 and out.strip() == "hello", (version, out, err)


def test_helm_test_script_passes_against_the_image(containers):
    # files/pubsub_test.py is what `helm test` runs in the cluster; here against the image.
    cid = containers.run()
    p = port(cid, 1883)
    wait_for(lambda: mqtt_ready(p), "the MQTT listener")
    r = subprocess.run(
        ["python3", str(CHART / "files/pubsub_test.py"), "127.0.0.1", str(p)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok:")


def read_packet(sock):
    head = sock.recv(1)
    assert head, "connection closed without a packet"
    length, shift = 0, 0
    while True:
        b = sock.recv(1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk
        body += chunk
    return head[0], body


def test_sigterm_drains_with_disconnect_0x8b_and_exits_0(containers):
    cid = containers.run()
    p = port(cid, 1883)
    wait_for(lambda: mqtt_ready(p), "the MQTT listener")
    s = socket.create_connection(("127.0.0.1", p), timeout=20)
    # MQTT 5 CONNECT: clean start, keep alive 60, no properties, client id "drain"
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x05drain"
    s.sendall(bytes([0x10, len(body)]) + body)
    head, _ = read_packet(s)
    assert head >> 4 == 2
    docker("stop", "--time", "30", cid, timeout=60)  # SIGTERM (the image's STOPSIGNAL)
    head, body = read_packet(s)
    assert head >> 4 == 14 and body[0] == 0x8B, (hex(head), body.hex())
    s.close()
    state = health(cid)
    assert state["ExitCode"] == 0, state
    logs = docker("logs", cid).stderr
    assert "ferromq stopped" in logs


def test_data_survives_a_restart_in_the_volume(containers):
    vol = containers.volume()
    topic = f"image/retained/{uuid.uuid4().hex[:8]}"
    cid = containers.run(volume=vol)
    p = port(cid, 1883)
    wait_for(lambda: mqtt_ready(p), "the MQTT listener")
    s = socket.create_connection(("127.0.0.1", p), timeout=20)
    body = b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x03ret"
    s.sendall(bytes([0x10, len(body)]) + body)
    assert read_packet(s)[0] >> 4 == 2
    t = topic.encode()
    pub = struct.pack("!H", len(t)) + t + b"\x00\x01" + b"kept"
    s.sendall(bytes([0x33, len(pub)]) + pub)  # QoS 1, retain
    assert read_packet(s)[0] >> 4 == 4  # PUBACK: on disk (strict durability)
    s.close()
    docker("stop", cid, timeout=60)
    docker("rm", cid)
    containers.ids.remove(cid)

    cid = containers.run(volume=vol)
    p = port(cid, 1883)
    wait_for(lambda: mqtt_ready(p), "the MQTT listener after the restart")
    r = docker("exec", cid, "/usr/local/bin/ferromq", "ctl", "retained", "get", topic)
    assert "kept" in r.stdout, r.stdout
