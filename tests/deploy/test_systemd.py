"""deploy/systemd: the unit verifies with systemd-analyze and its ExecStart runs.

`systemd-analyze verify --root=DIR` checks the unit inside a scratch root that holds
the unit, the ferromq binary at /usr/local/bin (as the README installs it) and the
stock unit files it depends on; any warning counts as a failure. Then the unit's own
ExecStart flags run the real binary against deploy/systemd/ferromq.toml (listeners
moved to ephemeral loopback ports, data in a temp dir), which must load the config,
serve, and stop with 0 on SIGTERM, the unit's KillSignal.
"""

import configparser
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .deployutil import REPO

UNIT = REPO / "deploy/systemd/ferromq.service"
TOML = REPO / "deploy/systemd/ferromq.toml"


def debug_binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    b = Path(os.environ.get("FERROMQ_BIN", target / "debug" / "ferromq"))
    if not b.exists():
        pytest.skip(f"no broker binary at {b} (cargo build -p ferromq)")
    return b


def unit_service_section():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    # systemd allows repeated keys (SystemCallFilter=); keep the last, enough here.
    cp.read_string(UNIT.read_text())
    return cp["Service"]


def test_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/ferromq.service")
    shutil.copy(debug_binary(), root / "usr/local/bin/ferromq")
    (root / "bin").mkdir()
    shutil.copy(shutil.which("kill") or "/bin/kill", root / "bin/kill")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    r = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "ferromq.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


def test_unit_is_hardened_and_reloads_with_hup():
    s = unit_service_section()
    assert s["Type"] == "simple"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["DynamicUser"] == "yes" and s["StateDirectory"] == "ferromq"
    assert s["ProtectSystem"] == "strict"
    assert s["NoNewPrivileges"] == "yes"
    assert s["CapabilityBoundingSet"] == ""
    assert s["Environment"] == "FERROMQ_PERSISTENCE_PATH=/var/lib/ferromq"
    assert set(s["RestartPreventExitStatus"].split()) == {"78", "74"}


def test_execstart_flags_run_the_example_config(tmp_path):
    binary = debug_binary()
    argv = shlex.split(unit_service_section()["ExecStart"])
    assert argv[0] == "/usr/local/bin/ferromq"
    # The unit's flags, with the config path pointing at the repository's copy.
    flags = [str(TOML) if a == "/etc/ferromq/ferromq.toml" else a for a in argv[1:]]
    assert flags == ["-c", str(TOML)]
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROMQ_")}
    env["FERROMQ_PERSISTENCE_PATH"] = str(tmp_path / "data")  # as the unit sets it
    env["FERROMQ_LISTEN"] = "127.0.0.1:0"
    env["FERROMQ_HTTP_LISTEN"] = "127.0.0.1:0"
    proc = subprocess.Popen(
        [str(binary), *flags, "--ready-file", str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"broker did not become ready: rc={proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
        listeners = json.loads(ready.read_text())["listeners"]
        assert {l["protocol"] for l in listeners} >= {"mqtt", "http"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
