"""The Mosquitto tutorial, with Debian's real `mosquitto_sub` / `mosquitto_pub`.

Most users meet MQTT through this walkthrough: start `mosquitto_sub -t test/topic`
in one terminal, `mosquitto_pub -t test/topic -m "Hello, Mosquitto!"` in another,
then retained messages (`-r`) and clearing them (`-r -n`). These tests run it
against ferromq with the stock clients, for MQTT 3.1.1 (the clients' default) and
5.0 and every QoS.

No sleeps: a subscriber runs with `-d`, whose debug output on stdout says
"received SUBACK" once the broker has the subscription, and only then is anything
published. "Nothing retained" is checked by publishing a non-retained sentinel
after the SUBACK: it must be the first (and only) message the subscriber sees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading

import pytest

from conftest import wait_for

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub")),
    reason="mosquitto-clients is not installed (scripts/test-all installs it)",
)

HELLO = "Hello, Mosquitto!"
TIMEOUT = 15  # seconds; every client also gets -W so it can never hang a run
# mosquitto_sub's stdout is block-buffered when piped; line-buffer it so that
# "received SUBACK" is visible while the process is still running.
LINEBUF = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
PUBLISH_LINE = re.compile(r"received PUBLISH \(d(\d), q(\d), r(\d), m(\d+), '([^']*)'")


def _is_debug(line: str) -> bool:
    return line.startswith("Client ") or line.startswith("Subscribed (mid")


class Sub:
    """A running `mosquitto_sub -d`, with its output collected line by line."""

    def __init__(self, broker, topic: str, *extra: str):
        self.cmd = [*LINEBUF, "mosquitto_sub", "-d", "-h", broker.host, "-p", str(broker.port),
                    "-t", topic, "-W", str(TIMEOUT), *extra]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def transcript(self) -> str:
        return f"$ {' '.join(self.cmd)}\n" + "\n".join(self.lines)

    def wait_subscribed(self):
        def subscribed():
            if any("received SUBACK" in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"mosquitto_sub exited ({self.proc.returncode}) before its SUBACK:\n"
                                     + self.transcript())
            return False

        wait_for(subscribed, TIMEOUT, what="mosquitto_sub to receive its SUBACK")
        granted = [line for line in self.lines if line.startswith("Subscribed (mid")]
        assert granted and not granted[0].rstrip().endswith(("128", "135")), self.transcript()

    def finish(self) -> list[str]:
        """Waits for exit (use with -C N) and returns the payload lines."""
        try:
            self.proc.wait(TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        assert self.proc.returncode == 0, f"mosquitto_sub exited with {self.proc.returncode}:\n" + self.transcript()
        return [line for line in self.lines if not _is_debug(line)]

    def publishes(self) -> list[tuple[int, int, str]]:
        """(qos, retain, topic) of each PUBLISH the subscriber received."""
        return [(int(m[2]), int(m[3]), m[5]) for m in (PUBLISH_LINE.search(l) for l in self.lines) if m]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sub(broker):
    started: list[Sub] = []

    def start(topic: str, *extra: str) -> Sub:
        s = Sub(broker, topic, *extra)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def pub(broker, topic: str, *extra: str) -> None:
    cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-t", topic, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"$ {' '.join(cmd)}\nexit {done.returncode}\n{done.stdout}{done.stderr}"


VERSIONS = [
    pytest.param([], id="default"),  # the clients' default: MQTT 3.1.1
    pytest.param(["-V", "mqttv311"], id="mqttv311"),
    pytest.param(["-V", "mqttv5"], id="mqttv5"),
]


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("version", VERSIONS)
def test_hello(broker, sub, version, qos):
    """The tutorial's first step: one terminal subscribes, the other publishes."""
    s = sub("test/topic", "-C", "1", "-q", str(qos), *version)
    s.wait_subscribed()
    pub(broker, "test/topic", "-m", HELLO, "-q", str(qos), *version)
    assert s.finish() == [HELLO], s.transcript()
    # Delivered once, at the QoS both sides asked for, not retained.
    assert s.publishes() == [(qos, 0, "test/topic")], s.transcript()


def test_wildcard_verbose(broker, sub):
    """`mosquitto_sub -v -t 'home/#'` prints topic and payload for every match."""
    s = sub("home/#", "-v", "-C", "2")
    s.wait_subscribed()
    pub(broker, "home/livingroom/temperature", "-m", "21.5")
    pub(broker, "garden/temperature", "-m", "9.0")  # does not match home/#
    pub(broker, "home/kitchen/temperature", "-m", "19.0")
    assert s.finish() == ["home/livingroom/temperature 21.5", "home/kitchen/temperature 19.0"], s.transcript()


@pytest.mark.parametrize("version", [VERSIONS[1], VERSIONS[2]])
def test_retained(broker, sub, version):
    """`mosquitto_pub -r` keeps the last message; a later subscriber gets it at once."""
    pub(broker, "test/retained", "-r", "-q", "1", "-m", "kept for later", *version)
    s = sub("test/retained", "-C", "1", *version)
    assert s.finish() == ["kept for later"], s.transcript()
    assert s.publishes() == [(0, 1, "test/retained")], s.transcript()  # retain flag set [MQTT-3.3.1-8]

    # A newer retained message replaces the old one [MQTT-3.3.1-5].
    pub(broker, "test/retained", "-r", "-q", "1", "-m", "newer", *version)
    s = sub("test/retained", "-C", "1", *version)
    assert s.finish() == ["newer"], s.transcript()


@pytest.mark.parametrize("version", [VERSIONS[1], VERSIONS[2]])
def test_clear_retained(broker, sub, version):
    """`mosquitto_pub -r -n` (empty retained payload) deletes it [MQTT-3.3.1-10]."""
    pub(broker, "test/retained", "-r", "-q", "1", "-m", "to be cleared", *version)
    pub(broker, "test/retained", "-r", "-q", "1", "-n", *version)

    s = sub("test/retained", "-C", "1", *version)
    s.wait_subscribed()
    # Anything retained would have been sent right after the SUBACK; the sentinel
    # published now must be the first message.
    pub(broker, "test/retained", "-m", "sentinel", *version)
    assert s.finish() == ["sentinel"], s.transcript()
    assert s.publishes() == [(0, 0, "test/retained")], s.transcript()
