"""Shared fixtures for ferromq's black-box Python tests.

Every test talks to a real `ferromq` process started on an ephemeral port
(`listener 0 127.0.0.1`); the broker writes the addresses it bound to a ready
file (`--ready-file`), which is how the tests learn the port without races.

Set `FERROMQ_TEST_BROKER=mosquitto` to run the same tests against Debian's
Mosquitto (the reference broker) when checking what a test expects.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "ferromq"


def ferromq_bin() -> Path:
    return Path(os.environ.get("FERROMQ_BIN", DEFAULT_BIN))


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Polls `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gen_certs_bin() -> Path:
    """The `gen-test-certs` helper (tests/src/bin), built next to the broker."""
    return Path(os.environ.get("FERROMQ_TEST_GEN_CERTS", ferromq_bin().parent / "gen-test-certs"))


@dataclass
class Certs:
    """Test certificates made at test time by `gen-test-certs` (rcgen): see
    tests/src/certs.rs for the files. `cert(name)` / `key(name)` give their paths."""

    dir: Path

    def cert(self, name: str) -> str:
        return str(self.dir / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.dir / f"{name}.key")


@pytest.fixture
def certs(tmp_path) -> Certs:
    """A fresh test PKI per test (tests may overwrite the files to test reloads)."""
    out = tmp_path / "certs"
    subprocess.run([str(gen_certs_bin()), str(out)], check=True, capture_output=True, timeout=60)
    return Certs(out)


@dataclass
class Endpoint:
    """One listener's address: what `mqttclient.Client` needs as its `broker`."""

    host: str
    port: int


@dataclass
class Broker:
    """A running broker process; `host`/`port` is its first MQTT listener (or its
    first listener, if none speaks plain MQTT)."""

    proc: subprocess.Popen
    workdir: Path
    host: str
    port: int
    listeners: list = field(default_factory=list)
    log_path: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def endpoint(self, protocol: str, index: int = 0) -> Endpoint:
        """The `index`th listener speaking `protocol` (mqtt, mqtts, ws, wss)."""
        found = [l for l in self.listeners if l["protocol"] == protocol]
        host, port = found[index]["addr"].rsplit(":", 1)
        return Endpoint(host, int(port))

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_broker(config: str = "", *, args: list[str] | None = None, workdir: Path | None = None,
                 timeout: float = 20.0, env: dict | None = None, wrap: list[str] | None = None) -> Broker:
    """Starts a broker with a mosquitto.conf-style `config` (a `listener 0 127.0.0.1`
    line is prepended unless the config declares a listener itself). `env` adds
    environment variables, for ferromq keys without a mosquitto.conf directive
    (e.g. {"FERROMQ_MQTT_CONNECT_TIMEOUT": "1s"}); Mosquitto ignores them."""
    proc_env = {**os.environ, **(env or {})}
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ferromq-test-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "broker.log"
    target = os.environ.get("FERROMQ_TEST_BROKER", "ferromq")
    if target == "mosquitto":
        port = _free_port()
        body = "\n".join(l for l in config.splitlines() if not l.startswith("listener"))
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{body}\n")
        logf = open(log_path, "wb")
        proc = subprocess.Popen(["mosquitto", "-c", str(conf), "-v"], stdout=logf, stderr=subprocess.STDOUT,
                                cwd=workdir, env=proc_env)
        broker = Broker(proc, workdir, "127.0.0.1", port, [], log_path)

        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, timeout, what="mosquitto to listen")
        return broker

    if "listener" not in config:
        config = "listener 0 127.0.0.1\n" + config
    conf = workdir / "ferromq.conf"
    conf.write_text(config)
    ready = workdir / "ready.json"
    # A restart in the same directory: the previous run's file names dead ports.
    ready.unlink(missing_ok=True)
    logf = open(log_path, "ab")
    # The operators' HTTP listener defaults to 127.0.0.1:8080; tests run many brokers
    # at once, so it gets an ephemeral port too (a later --http-listen in `args` wins).
    # `wrap` runs the broker under a command that execs it (e.g. `ip netns exec NS`).
    cmd = (wrap or []) + [str(ferromq_bin()), "-c", str(conf), "--ready-file", str(ready),
                          "--data-dir", str(workdir / "data"), "--http-listen", "127.0.0.1:0"] + (args or [])
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=workdir, env=proc_env)

    def is_ready():
        if proc.poll() is not None:
            raise RuntimeError(f"ferromq exited with {proc.returncode}:\n{log_path.read_text()}")
        if ready.exists():
            try:
                return json.loads(ready.read_text())
            except json.JSONDecodeError:
                return None
        return None

    try:
        info = wait_for(is_ready, timeout, what="ferromq ready file")
    except BaseException:
        # Never leave a half-started broker behind.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        logf.close()
        raise
    mqtt = [l for l in info["listeners"] if l["protocol"] == "mqtt"] or info["listeners"]
    host, port = mqtt[0]["addr"].rsplit(":", 1)
    return Broker(proc, workdir, host, int(port), info["listeners"], log_path)


def http_url(broker: Broker) -> str:
    """Base URL of a broker's operators' HTTP listener (from its ready file)."""
    http = [l for l in broker.listeners if l["protocol"] == "http"]
    if not http:
        raise RuntimeError(f"no http listener in {broker.listeners}")
    host, port = http[0]["addr"].rsplit(":", 1)
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


@pytest.fixture
def broker_factory():
    """Starts brokers with custom configs; all are stopped at the end of the test."""
    started: list[Broker] = []

    def factory(config: str = "", **kw) -> Broker:
        b = start_broker(config, **kw)
        started.append(b)
        return b

    yield factory
    for b in started:
        b.stop()
        shutil.rmtree(b.workdir, ignore_errors=True)


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A broker on its default settings (plus an ephemeral loopback listener)."""
    return broker_factory("")
