"""Authentication: password files written by the real `mosquitto_passwd`, the CONNACK
codes of failed logins, anonymous access, rate limiting of failed logins per source
address, SIGHUP reload, and the start-up errors for missing or broken files.

Codes (as Mosquitto answers): a failed login gets CONNACK 0x05 (Not authorized) on
MQTT 3.1.1; on MQTT 5, 0x86 (Bad user name or password) for wrong credentials and 0x87
(Not authorized) for an anonymous client where anonymous access is off; an address that
failed too often gets 0x9F (Connection rate exceeded) / 0x05 at once.

These test ferromq's documented behaviour; they are not meant to pass against
Mosquitto (FERROMQ_TEST_BROKER=mosquitto): it answers a v5 wrong password with 0x87,
has no failed-login limit, and as root it drops privileges and cannot read files in
pytest's private temporary directories.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import ferromq_bin, wait_for
from mqttclient import CONNACK, Client, RawClient, both_protocols, connect, unique

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
needs_mosquitto_passwd = pytest.mark.skipif(MOSQUITTO_PASSWD is None,
                                            reason="mosquitto_passwd not installed (Debian package mosquitto)")

V3_NOT_AUTHORIZED = 0x05
BAD_USER_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
CONNECTION_RATE_EXCEEDED = 0x9F


def mosquitto_passwd(path: Path, user: str, password: str, create: bool = False):
    """Adds `user` to `path` with the real tool (PBKDF2-SHA512 `$7$` lines)."""
    args = [MOSQUITTO_PASSWD] + (["-c"] if create else []) + ["-b", str(path), user, password]
    subprocess.run(args, check=True, capture_output=True)
    path.chmod(0o644)  # Mosquitto started as root reads it after dropping privileges


def sha512_line(user: str, password: str) -> str:
    """A `$6$` line as mosquitto_passwd 1.x wrote it: SHA-512(password + salt)."""
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


def refused_code(broker, protocol: int, username: str | None, password: str | None, source: str | None = None):
    """CONNECTs with a raw client and returns the CONNACK code (the connection must close)."""
    c = RawClient(broker, protocol, source=source)
    ack = c.connect(unique("auth"), username=username, password=password, check=False)
    code = ack.reason_code
    if code != 0:
        c.wait_closed()
    c.close()
    return code


@pytest.fixture
def passwd(tmp_path) -> Path:
    if MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd not installed (Debian package mosquitto)")
    path = tmp_path / "passwd"
    mosquitto_passwd(path, "alice", "wonderland", create=True)
    mosquitto_passwd(path, "bob", "b0b with spaces: and colons")
    return path


@both_protocols
def test_mosquitto_passwd_file_accepted(broker_factory, passwd, proto):
    """Users of a file written by `mosquitto_passwd -c -b` log in; the username is then
    theirs for the ACL. Publishing between two authenticated clients works."""
    broker = broker_factory(f"allow_anonymous false\npassword_file {passwd}\n")
    topic = unique("auth")
    s = connect(broker, protocol=proto, username="bob", password="b0b with spaces: and colons")
    s.subscribe(topic, 1)
    p = connect(broker, protocol=proto, username="alice", password="wonderland")
    p.publish(topic, b"hello", qos=1)
    assert s.wait_message(topic).payload == b"hello"


def test_wrong_credentials_refused_with_exact_codes(broker_factory, passwd):
    """Wrong password, unknown user, missing password: v5 0x86, 3.1.1 0x05; no username
    where anonymous access is off: v5 0x87, 3.1.1 0x05 [MQTT-3.2.2-6]: session present 0,
    then the connection closes."""
    broker = broker_factory(f"allow_anonymous false\npassword_file {passwd}\n",
                            env={"FERROMQ_AUTH_FAILURE_LIMIT": "0"})
    for username, password in [("alice", "Wonderland"), ("mallory", "wonderland"), ("alice", None),
                               ("alice", "")]:
        assert refused_code(broker, 5, username, password) == BAD_USER_OR_PASSWORD, (username, password)
        assert refused_code(broker, 4, username, password) == V3_NOT_AUTHORIZED, (username, password)
    assert refused_code(broker, 5, None, None) == NOT_AUTHORIZED
    assert refused_code(broker, 4, None, None) == V3_NOT_AUTHORIZED
    # paho sees the same.
    c = Client(broker, protocol=5, username="alice", password="nope")
    assert c.connect(check=False).reason_code == BAD_USER_OR_PASSWORD
    log = broker.log()
    assert "login failed" in log and "mallory" in log
    assert "Wonderland" not in log, "passwords never reach the log"


def test_anonymous_allowed_with_password_file(broker_factory, passwd):
    """allow_anonymous true with a password file: anonymous clients get in, clients
    that give a username must still prove it."""
    broker = broker_factory(f"allow_anonymous true\npassword_file {passwd}\n")
    connect(broker, protocol=4)
    connect(broker, protocol=5, username="alice", password="wonderland")
    assert refused_code(broker, 5, "alice", "x") == BAD_USER_OR_PASSWORD


def test_sha512_line_accepted(broker_factory, tmp_path):
    """A `$6$` line (salted SHA-512, Mosquitto 1.x) next to a `$7$` one."""
    modern = ""
    if MOSQUITTO_PASSWD:
        # (mosquitto_passwd itself calls a file with comments corrupt: write it apart.)
        mosquitto_passwd(tmp_path / "modern", "modern", "new-secret", create=True)
        modern = (tmp_path / "modern").read_text()
    path = tmp_path / "passwd"
    path.write_text("# old and new\n" + sha512_line("legacy", "old-secret") + modern)
    path.chmod(0o644)
    broker = broker_factory(f"allow_anonymous false\npassword_file {path}\n")
    connect(broker, protocol=4, username="legacy", password="old-secret")
    connect(broker, protocol=5, username="legacy", password="old-secret")
    assert refused_code(broker, 5, "legacy", "old-secreT") == BAD_USER_OR_PASSWORD
    if MOSQUITTO_PASSWD:
        connect(broker, protocol=5, username="modern", password="new-secret")


@needs_mosquitto_passwd
def test_mosquitto_clients_with_credentials(broker_factory, passwd):
    """The stock clients with -u/-P, as in the Mosquitto tutorial's authentication step."""
    broker = broker_factory(f"allow_anonymous false\npassword_file {passwd}\n")
    topic = unique("tut")
    base = ["-h", broker.host, "-p", str(broker.port), "-t", topic]
    sub = subprocess.Popen(["mosquitto_sub", *base, "-u", "alice", "-P", "wonderland", "-C", "1", "-q", "1",
                            "-i", unique("sub")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: "client connected" in broker.log(), what="mosquitto_sub connected")
        # Retry until the subscription is in place (no SUBACK visible from outside).
        def delivered():
            subprocess.run(["mosquitto_pub", *base, "-u", "bob", "-P", "b0b with spaces: and colons",
                            "-m", "authenticated", "-q", "1"], check=True, capture_output=True)
            return sub.poll() is not None
        wait_for(delivered, timeout=10, interval=0.2, what="mosquitto_sub to receive")
        assert sub.stdout.read().decode().strip() == "authenticated"
    finally:
        if sub.poll() is None:
            sub.kill()
        sub.wait()
    bad = subprocess.run(["mosquitto_pub", *base, "-u", "alice", "-P", "wrong", "-m", "x"], capture_output=True)
    assert bad.returncode != 0
    assert b"not authorised" in bad.stderr.lower() or b"not authorized" in bad.stderr.lower(), bad.stderr


def test_failed_logins_rate_limited_per_address(broker_factory, passwd):
    """auth.failure_limit failures within auth.failure_window from one address block it:
    its next CONNECTs, even with the right password, get 0x9F (v5) / 0x05 (3.1.1) at
    once. A client from another address (127.0.0.1 vs the attacker's 127.0.0.2) keeps
    logging in meanwhile."""
    broker = broker_factory(f"allow_anonymous false\npassword_file {passwd}\n",
                            env={"FERROMQ_AUTH_FAILURE_LIMIT": "5", "FERROMQ_AUTH_FAILURE_WINDOW": "30s",
                                 "FERROMQ_AUTH_FAILURE_BLOCK": "60s"})
    attacker = "127.0.0.2"
    for i in range(5):
        assert refused_code(broker, 5, "alice", f"guess{i}", source=attacker) == BAD_USER_OR_PASSWORD
    assert refused_code(broker, 5, "alice", "wonderland", source=attacker) == CONNECTION_RATE_EXCEEDED
    assert refused_code(broker, 4, "alice", "wonderland", source=attacker) == V3_NOT_AUTHORIZED
    # The well-behaved client elsewhere is unaffected.
    good = connect(broker, protocol=5, username="alice", password="wonderland")
    topic = unique("after")
    good.subscribe(topic, 1)
    good.publish(topic, b"still here", qos=1)
    assert good.wait_message(topic).payload == b"still here"
    log = broker.log()
    assert "127.0.0.2" in log and "failure_limit" in log, log[-2000:]


def test_short_block_expires(broker_factory, passwd):
    """After auth.failure_block the address may try again."""
    broker = broker_factory(f"allow_anonymous false\npassword_file {passwd}\n",
                            env={"FERROMQ_AUTH_FAILURE_LIMIT": "2", "FERROMQ_AUTH_FAILURE_BLOCK": "1s"})
    for _ in range(2):
        assert refused_code(broker, 5, "alice", "x", source="127.0.0.3") == BAD_USER_OR_PASSWORD
    assert refused_code(broker, 5, "alice", "wonderland", source="127.0.0.3") == CONNECTION_RATE_EXCEEDED
    wait_for(lambda: refused_code(broker, 5, "alice", "wonderland", source="127.0.0.3") == 0,
             timeout=10, interval=0.25, what="the block to expire")


def test_sighup_reloads_password_file(broker_factory, passwd):
    """SIGHUP re-reads the file: a new user gets in, a removed one is refused. A broken
    file on reload is logged with its line number and the previous users stay valid."""
    broker = broker_factory(f"allow_anonymous false\npassword_file {passwd}\n",
                            env={"FERROMQ_AUTH_FAILURE_LIMIT": "0"})
    assert refused_code(broker, 5, "carol", "c4rol") == BAD_USER_OR_PASSWORD
    mosquitto_passwd(passwd, "carol", "c4rol")
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: refused_code(broker, 5, "carol", "c4rol") == 0, what="carol after SIGHUP")

    good = passwd.read_text()
    passwd.write_text(good + "dave:plaintext-password\n")
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the previous password_file content" in broker.log(), what="reload error")
    assert "line 4" in broker.log(), broker.log()[-1500:]
    connect(broker, protocol=5, username="carol", password="c4rol")
    assert broker.alive()


def _run_broker_expecting_exit(config: str, workdir: Path, timeout: float = 20.0):
    conf = workdir / "ferromq.conf"
    conf.write_text(config)
    return subprocess.run([str(ferromq_bin()), "-c", str(conf), "--ready-file", str(workdir / "ready.json"),
                           "--data-dir", str(workdir / "data")], capture_output=True, timeout=timeout, cwd=workdir)


@pytest.mark.skipif(os.environ.get("FERROMQ_TEST_BROKER") == "mosquitto", reason="ferromq's exit codes")
def test_missing_or_broken_files_stop_the_broker(tmp_path):
    """A missing, unreadable or invalid password / ACL file at start: exit 78 with a
    message naming the file (and the bad lines), before any port is bound."""
    missing = tmp_path / "no-such-passwd"
    r = _run_broker_expecting_exit(f"listener 0 127.0.0.1\npassword_file {missing}\n", tmp_path)
    assert r.returncode == 78, r
    assert f"cannot read password_file {missing}" in r.stderr.decode()
    assert not (tmp_path / "ready.json").exists()

    acl = tmp_path / "acl"
    acl.write_text("topic read a/#\nuser\ntopic read a/#/b\n")
    r = _run_broker_expecting_exit(f"listener 0 127.0.0.1\nacl_file {acl}\n", tmp_path)
    assert r.returncode == 78, r
    err = r.stderr.decode()
    assert f"invalid acl_file {acl}" in err and "line 2" in err and "line 3" in err, err

    pw = tmp_path / "passwd"
    pw.write_text("ok:$7$101$AAAA$" + base64.b64encode(b"x" * 64).decode() + "\nplain:secret\n")
    r = _run_broker_expecting_exit(f"listener 0 127.0.0.1\npassword_file {pw}\n", tmp_path)
    assert r.returncode == 78, r
    assert f"invalid password_file {pw}" in r.stderr.decode() and "line 2" in r.stderr.decode()

    if os.geteuid() != 0:  # root reads any file
        pw.chmod(0)
        r = _run_broker_expecting_exit(f"listener 0 127.0.0.1\npassword_file {pw}\n", tmp_path)
        assert r.returncode == 78 and "cannot read password_file" in r.stderr.decode(), r
