"""A full disk never crashes the broker (issue #3, "Bad input").

The data directory sits on a 3 MiB tmpfs mounted by the test (root only: skipped
otherwise, with the reason). A persistent subscriber's queue fills it; then:
- MQTT 5 QoS 1 publishes that cannot be stored get PUBACK 0x97 (Quota exceeded);
- a 3.1.1 QoS 1 publisher is disconnected without a PUBACK, so it retries later;
- the broker logs why, stays up, and QoS 0 traffic that needs no disk keeps flowing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ferromq_bin, wait_for
from mqttclient import PUBACK, PUBLISH, RawClient, unique


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def full_disk_broker():
    root = Path(tempfile.mkdtemp(prefix="ferromq-full-"))
    mnt = root / "mnt"
    mnt.mkdir()
    if not _mount_tmpfs(mnt, "3m"):
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    conf = root / "ferromq.conf"
    conf.write_text("listener 0 127.0.0.1\nsys_interval 0\nmax_queued_messages 100000\n"
                    "max_queued_bytes 1000000000\n")
    ready = root / "ready.json"
    log = open(root / "broker.log", "wb")
    proc = subprocess.Popen([str(ferromq_bin()), "-c", str(conf), "--ready-file", str(ready),
                             "--data-dir", str(mnt / "data"), "--http-listen", "127.0.0.1:0"], stdout=log, stderr=subprocess.STDOUT)
    try:
        info = wait_for(lambda: ready.exists() and json.loads(ready.read_text()), 20, what="ready file")
        host, port = info["listeners"][0]["addr"].rsplit(":", 1)
        yield proc, host, int(port), root / "broker.log"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


class _Broker:
    def __init__(self, host, port):
        self.host, self.port = host, port


def test_full_disk_refuses_with_0x97_and_keeps_serving(full_disk_broker):
    proc, host, port, log_path = full_disk_broker
    b = _Broker(host, port)
    topic = unique("full")
    # A persistent subscriber that goes offline: its queue goes to disk.
    sub = RawClient(b, protocol=5)
    sub.connect(unique("fullsub"), clean=False, properties={"session_expiry": 3600})
    sub.subscribe(topic, 1)
    sub.disconnect()

    pub = RawClient(b, protocol=5)
    pub.connect(unique("fullpub"))
    payload = os.urandom(20_000)
    codes = []
    for _ in range(400):
        pid = pub.publish(topic, payload, 1)
        ack = pub.expect(PUBACK, 20, lambda p, pid=pid: p.packet_id == pid)
        codes.append(ack.reason_code)
        if ack.reason_code == 0x97:
            break
    assert 0x97 in codes, f"never refused; PUBACK codes seen: {sorted(set(codes))}"
    assert proc.poll() is None, "broker died on a full disk"
    assert "disk full" in log_path.read_text()

    # 3.1.1 has no negative acknowledgement: closed without a PUBACK, so it retries.
    old = RawClient(b, protocol=4)
    old.connect(unique("fullpub311"))
    old.publish(topic, payload, 1)
    old.wait_closed()
    assert not [p for p in old.received if p.type == PUBACK], old.received

    # Clients that need no disk keep working.
    live = unique("live")
    watcher = RawClient(b, protocol=5)
    watcher.connect(unique("watch"))
    watcher.subscribe(live, 0)
    sender = RawClient(b, protocol=4)
    sender.connect(unique("send"))
    sender.publish(live, b"still here", 0)
    msg = watcher.expect(PUBLISH, 10)
    assert msg.payload == b"still here"
    assert proc.poll() is None
