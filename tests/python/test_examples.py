"""examples/sensor.py and examples/app.py, run as a user would, against the broker.

The app subscribes to `home/+/temperature`; once it says it is subscribed, the
sensor publishes readings to `home/livingroom/temperature` and the app must print
every one of them, in order, with the sensor's values.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest

from conftest import REPO, wait_for

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (see tests/python/requirements.txt)")

EXAMPLES = REPO / "examples"
TIMEOUT = 20


class Proc:
    def __init__(self, *args: str):
        self.cmd = [sys.executable, *args]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def transcript(self) -> str:
        return f"$ {' '.join(self.cmd)}\n" + "\n".join(self.lines)

    def wait(self) -> int:
        try:
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)
        return self.proc.returncode


@pytest.mark.parametrize("count", [1, 5])
def test_sensor_to_app(broker, count):
    addr = ["--host", broker.host, "--port", str(broker.port)]
    app = Proc(str(EXAMPLES / "app.py"), *addr, "--count", str(count))

    def subscribed():
        if app.proc.poll() is not None:
            app.wait()
            raise AssertionError(f"app exited early ({app.proc.returncode}):\n" + app.transcript())
        return any(line.startswith("app: subscribed to home/+/temperature") for line in app.lines)

    try:
        wait_for(subscribed, TIMEOUT, what="the app's subscription")
        sensor = Proc(str(EXAMPLES / "sensor.py"), *addr, "--count", str(count), "--interval", "0.05")
        assert sensor.wait() == 0, sensor.transcript()
        assert app.wait() == 0, app.transcript()
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
            app.proc.wait()

    sent = [m.groups() for m in (re.fullmatch(r"sensor: published home/livingroom/temperature (-?[\d.]+) C \(seq (\d+)\)", l)
                                 for l in sensor.lines) if m]
    got = [m.groups() for m in (re.fullmatch(r"livingroom: (-?[\d.]+) C \(seq (\d+)\)", l) for l in app.lines) if m]
    assert len(sent) == count, sensor.transcript()
    assert got == sent, f"{app.transcript()}\n\n{sensor.transcript()}"
