"""Drive deploy/compose/docker-compose.yml from tests: one Compose project per test
module (its own project name, network name and volumes), nodes addressed by service
name (`ferromq-N`), their published ports looked up after every start (they are
ephemeral and change when a container restarts or reconnects to its network).

Only `docker-compose` v1 exists on this machine (no `docker compose` plugin);
`compose_cmd()` prefers the plugin when it works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .deployutil import REPO

sys.path.insert(0, str(REPO / "tests" / "python"))
from mqttclient import Client, ConnectFailed, wait_until  # noqa: E402

COMPOSE = REPO / "deploy/compose/docker-compose.yml"
TOKEN = "compose-test-token"
BIN = "/usr/local/bin/ferromq"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """`mqttclient.wait_until` with a slower default poll (each poll is an HTTP call)."""
    return wait_until(predicate, timeout, what, interval)


@dataclass(frozen=True)
class Endpoint:
    """What mqttclient.Client needs: host and port (the MQTT port published on loopback)."""

    host: str
    port: int


class ComposeCluster:
    """One Compose project: `up`, `down -v`, per-service container ids, ports, HTTP."""

    def __init__(self, image: str, compose_cmd: list[str], prefix: str = "fmq"):
        self.project = f"{prefix}{uuid.uuid4().hex[:8]}"
        self.network = f"{self.project}-headless"
        self.cmd = [*compose_cmd, "-p", self.project, "-f", str(COMPOSE), "--profile", "scale"]
        self.env = {
            "FERROMQ_IMAGE": image,
            "FERROMQ_NETWORK": self.network,
            "FERROMQ_HTTP_TOKEN": TOKEN,
            "FERROMQ_CLUSTER_LEADER_LOST_TIMEOUT": "3s",
            "FERROMQ_CLUSTER_REMOVE_DEPARTED_AFTER": "5s",
        }
        self._cids: dict[str, str] = {}

    # ---- compose and docker ----

    def compose(self, *args, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        import os

        env = {**os.environ, **self.env}
        r = subprocess.run([*self.cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)
        if check:
            assert r.returncode == 0, f"docker-compose {' '.join(args)}: {r.stderr}"
        return r

    @staticmethod
    def docker(*args, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr}"
        return r

    def up(self, *services: str):
        self.compose("up", "-d", *services)

    def down(self):
        self.compose("down", "-v", "--remove-orphans", "-t", "10", check=False)

    def logs(self, tail: int = 300) -> str:
        return self.compose("logs", "--no-color", f"--tail={tail}", check=False).stdout

    def cid(self, svc: str) -> str:
        if svc not in self._cids:
            out = self.compose("ps", "-q", svc).stdout.strip()
            assert out, f"no container for {svc}"
            self._cids[svc] = out
        return self._cids[svc]

    def forget(self, svc: str):
        self._cids.pop(svc, None)

    def port(self, svc: str, container_port: int) -> int | None:
        r = self.docker("port", self.cid(svc), f"{container_port}/tcp", check=False)
        lines = r.stdout.strip().splitlines()
        if r.returncode != 0 or not lines:
            return None
        return int(lines[0].rsplit(":", 1)[1])

    def mqtt(self, svc: str) -> Endpoint:
        p = wait_for(lambda: self.port(svc, 1883), 20, f"{svc}'s published MQTT port")
        return Endpoint("127.0.0.1", p)

    def ctl(self, svc: str, *args, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """`ferromq ctl ...` inside the container (works while it is cut off the network)."""
        return self.docker("exec", self.cid(svc), BIN, "ctl", *args, check=check, timeout=timeout)

    # ---- HTTP (published 8080, with the admin token) ----

    def get(self, svc: str, path: str):
        p = self.port(svc, 8080)
        if p is None:
            return None, None
        req = urllib.request.Request(f"http://127.0.0.1:{p}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=3) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"null")
            except json.JSONDecodeError:
                return e.code, None
        except (urllib.error.URLError, OSError, json.JSONDecodeError):
            return None, None

    def ready(self, svc: str) -> bool:
        return self.get(svc, "/readyz")[0] == 200

    def ready_inside(self, svc: str) -> bool:
        """/readyz asked from inside the container (`ctl health --ready`, the probe)."""
        return self.ctl(svc, "health", "--ready", check=False, timeout=10).returncode == 0

    def status(self, svc: str) -> dict:
        code, body = self.get(svc, "/api/v1/cluster")
        return body if code == 200 and isinstance(body, dict) else {}

    def wait_cluster(self, services: list[str], members: int | None = None, timeout: float = 60) -> dict:
        """Every service ready, all agree on one leader, each lists `members` members.
        Returns {service: status}."""
        want = members if members is not None else len(services)
        last = {}

        def settled():
            seen = {}
            for s in services:
                if not self.ready(s):
                    last[s] = ("not ready", self.get(s, "/readyz"))
                    return None
                st = self.status(s)
                seen[s] = st
                if len(st.get("members", [])) != want or not st.get("leader"):
                    last[s] = st
                    return None
            if len({st["leader"] for st in seen.values()}) != 1:
                last.update(seen)
                return None
            return seen

        try:
            return wait_for(settled, timeout, f"{services} ready with {want} members and one leader", 0.3)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last seen: {last}") from None

    def leader(self, services: list[str], members: int | None = None) -> str:
        """The service whose node leads (by node id, as every listed node reports it)."""
        st = self.wait_cluster(services, members)
        lid = next(iter(st.values()))["leader"]
        return next(s for s, v in st.items() if v["node_id"] == lid)


# --------------------------------------------------------------------------------------
# Clients that roam: reconnect to the next node of a list when their node goes away
# --------------------------------------------------------------------------------------

@dataclass
class Roamer:
    """A v5 MQTT client that, when disconnected, connects to the next service of
    `services` (round robin, skipping nodes that refuse or are down). With
    `persistent`, Clean Start 0 and a session expiry: the session must follow it.
    `on_connect(client, connack)` runs after every (re)connection (resubscribe there
    when the session is not present)."""

    cluster: ComposeCluster
    services: list[str]
    persistent: bool = False
    client_id: str = field(default_factory=lambda: f"roam-{uuid.uuid4().hex[:8]}")
    on_connect: object = None
    index: int = 0
    history: list = field(default_factory=list)  # (service, session_present, disconnect reason)

    def __post_init__(self):
        self.client = Client(None, self.client_id, 5, clean=not self.persistent,
                             session_expiry=600 if self.persistent else None, keepalive=10)
        self.lock = threading.Lock()
        self._seen = 0

    @property
    def service(self) -> str:
        return self.services[self.index % len(self.services)]

    def connect(self, timeout: float = 60, advance: bool = False):
        """(Re)connects, trying the current node (the next one with `advance`) then the
        next ones, until `timeout`."""
        deadline = time.monotonic() + timeout
        first = not advance
        while True:
            if not first:
                self.index += 1
            first = False
            svc = self.service
            port = self.cluster.port(svc, 1883)
            if port is not None:
                self.client.broker = Endpoint("127.0.0.1", port)
                try:
                    self._seen = len(self.client.disconnects)
                    ack = self.client.connect(5.0)
                    reason = self.client.disconnects[-1].reason_code if self.client.disconnects else None
                    self.history.append((svc, ack.session_present, reason))
                    if self.on_connect:
                        self.on_connect(self.client, ack)
                    return ack
                except (ConnectFailed, TimeoutError, OSError, AssertionError):
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.client_id}: no node of {self.services} accepted a connection")
            time.sleep(0.2)

    def alive(self) -> bool:
        # paho's is_connected() can stay True after a server DISCONNECT (seen with
        # DISCONNECT 0x8B): a recorded disconnect since our CONNECT counts too.
        return self.client.is_connected() and len(self.client.disconnects) == self._seen

    def ensure_connected(self):
        with self.lock:
            if not self.alive():
                self.connect(advance=True)

    def stop(self):
        try:
            self.client.stop()
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass


class QoS1Load:
    """A QoS 1 publisher (Roamer) and a persistent QoS 1 subscriber (Roamer) on a topic,
    run in threads until `stop()`: the publisher counts a message acknowledged only
    after its PUBACK; the subscriber reconnects and, if its session was not present,
    resubscribes (and says so in `sub.history`). `lost()` = acknowledged, never received."""

    def __init__(self, cluster: ComposeCluster, pub_services: list[str], sub_services: list[str],
                 topic: str | None = None):
        self.topic = topic or f"load/{uuid.uuid4().hex[:8]}"
        self.cluster = cluster
        self.acked: list[int] = []
        self.unacked_attempts = 0
        self.errors: list[str] = []
        self._stop = threading.Event()

        def resubscribe(client, ack):
            if not ack.session_present:
                client.subscribe(self.topic, 1)

        self.sub = Roamer(cluster, sub_services, persistent=True, on_connect=resubscribe)
        self.pub = Roamer(cluster, pub_services)
        self.sub.connect()
        self.pub.connect()
        self._wait_route()
        self.threads = [threading.Thread(target=self._publish, daemon=True),
                        threading.Thread(target=self._watch_sub, daemon=True)]
        for t in self.threads:
            t.start()

    def _wait_route(self, timeout: float = 30):
        """Markers until the subscriber's route reached the publisher's node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pub.client.publish(self.topic, b"marker", qos=1)
            try:
                self.sub.client.wait_messages(1, 0.5, topic=self.topic)
                return
            except TimeoutError:
                continue
        raise TimeoutError("the subscriber's route never reached the publisher's node")

    def _publish(self):
        i = 0
        while not self._stop.is_set():
            try:
                self.pub.ensure_connected()
                self.pub.client.publish(self.topic, str(i).encode(), qos=1, timeout=5.0)
                self.acked.append(i)
                i += 1
            except Exception as e:  # noqa: BLE001 - not acknowledged: retry on the next node
                self.unacked_attempts += 1
                self.errors.append(f"{type(e).__name__}: {e}"[:200])
                try:
                    with self.pub.lock:
                        if self.pub.client._paho is not None:
                            self.pub.client.close_abruptly()
                        self.pub.connect(advance=True)
                except Exception as e2:  # noqa: BLE001
                    self.errors.append(f"reconnect: {e2}"[:200])
                    time.sleep(0.2)

    def _watch_sub(self):
        while not self._stop.is_set():
            try:
                self.sub.ensure_connected()
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"sub reconnect: {e}"[:200])
            time.sleep(0.05)

    def wait_acked(self, n: int, timeout: float = 30):
        start = len(self.acked)
        wait_for(lambda: len(self.acked) >= start + n, timeout, f"{n} more acknowledged publishes", 0.05)

    def received(self) -> set[int]:
        return {int(m.payload) for m in self.sub.client.received(self.topic) if m.payload.isdigit()}

    def stop(self, drain_timeout: float = 30) -> dict:
        """Stops publishing, waits (deadline) until every acknowledged message arrived or
        gives up; returns the counts."""
        self._stop.set()
        for t in self.threads:
            t.join(30)
        acked = set(self.acked)
        try:
            self.sub.ensure_connected()
            wait_for(lambda: acked <= self.received(), drain_timeout, "every acknowledged message", 0.2)
        except TimeoutError:
            pass
        got = self.received()
        dups = sum(1 for m in self.sub.client.received(self.topic) if m.payload.isdigit()) - len(got)
        result = {"acked": len(acked), "received": len(got), "lost": sorted(acked - got),
                  "duplicates": dups, "unacked_attempts": self.unacked_attempts,
                  "pub_history": self.pub.history, "sub_history": self.sub.history,
                  "errors": self.errors[:10]}
        self.sub.stop()
        self.pub.stop()
        return result
