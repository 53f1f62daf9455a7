"""A partition of one node from the other two, and its healing.

Node 3 runs in a network namespace of its own, joined to the host by a veth pair
(10.213.N.1 on the host, 10.213.N.3 in the namespace); nodes 1 and 2 bind their
cluster port on 10.213.N.1 so node 3 can reach them. The partition is iptables rules
inside node 3's namespace that drop the cluster (gRPC) traffic both ways, while its
MQTT and HTTP ports stay reachable, so the test can watch what the minority side does:

- its connected clients keep local pub/sub;
- it refuses what needs the Raft leader: a retained write (v5 PUBACK 0x80) and a
  persistent-session CONNECT (CONNACK 0x88);
- `/readyz` turns 503 after `cluster.leader_lost_timeout` (3 s here);
- after healing it is ready again and catches up with what the majority committed
  meanwhile, without a restart.

Needs root (CAP_NET_ADMIN) and iproute2/iptables; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time

import pytest

from clusterutil import get_json, grpc_addr, ready, start_node, status, wait_joined
from conftest import wait_for
from mqttclient import PUBACK, RawClient, connect, unique


def _run(*cmd: str, check: bool = True):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=30)


def _netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"fmqprobe{random.randrange(1 << 16)}"
    r = _run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


class Namespace:
    """A network namespace with a veth link to the host."""

    def __init__(self):
        n = random.randrange(1, 250)
        self.name = f"fmq{os.getpid() % 10000}x{n}"
        self.host_if = f"fmqh{n}x{os.getpid() % 1000}"
        self.ns_if = f"fmqn{n}x{os.getpid() % 1000}"
        self.host_ip = f"10.213.{n}.1"
        self.ns_ip = f"10.213.{n}.3"
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        self.exec("ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        self.exec("ip", "link", "set", self.ns_if, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *cmd: str, check: bool = True):
        return _run("ip", "netns", "exec", self.name, *cmd, check=check)

    def wrap(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self, ports: list[int]):
        """Drops cluster traffic to and from `ports` (the nodes' gRPC ports)."""
        for port in ports:
            self.exec("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")
            self.exec("iptables", "-A", "INPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP")
            self.exec("iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")
            self.exec("iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP")

    def heal(self):
        self.exec("iptables", "-F", "INPUT")
        self.exec("iptables", "-F", "OUTPUT")

    def close(self):
        _run("ip", "link", "del", self.host_if, check=False)
        _run("ip", "netns", "del", self.name, check=False)


@pytest.fixture
def netns():
    problem = _netns_problem()
    if problem:
        pytest.skip(problem)
    ns = Namespace()
    yield ns
    ns.close()


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def test_minority_node_serves_local_clients_refuses_raft_work_and_heals(netns):
    started = []
    try:
        on_host = {"FERROMQ_CLUSTER_LISTEN": f"{netns.host_ip}:0"}
        n1 = start_node([], "always", extra_env=on_host)
        started.append(n1)
        n2 = start_node([grpc_addr(n1)], "never", extra_env=on_host)
        started.append(n2)
        in_ns = {"FERROMQ_CLUSTER_LISTEN": f"{netns.ns_ip}:0"}
        n3 = start_node([grpc_addr(n1)], "never", extra_env=in_ns,
                        config=f"listener 0 {netns.ns_ip}\n",
                        args=["--http-listen", f"{netns.ns_ip}:0"], wrap=netns.wrap())
        started.append(n3)
        wait_joined([n1, n2, n3])

        # Clients of the minority-to-be node.
        sub = connect(n3, protocol=5)
        local_topic = unique("local")
        sub.subscribe(local_topic, 1)
        pub3 = connect(n3, protocol=5)

        netns.cut([port_of(grpc_addr(n)) for n in (n1, n2, n3)])
        t0 = time.monotonic()

        # The majority keeps a leader and keeps committing.
        kept_topic = unique("kept")
        pub1 = connect(n1, protocol=5)
        wait_for(lambda: status(n1).get("leader") not in (None, 0, status_leader_is(n3)), 20.0,
                 what="a leader on the majority side")
        pub1.publish(kept_topic, b"written during the partition", qos=1, retain=True)

        # The minority turns not-ready after leader_lost_timeout.
        wait_for(lambda: not ready(n3), 20.0, what="/readyz 503 on the minority node")
        print(f"minority not ready {time.monotonic() - t0:.1f} s after the cut")
        code, body = get_json(n3, "/readyz")
        assert code == 503 and body["checks"]["cluster"] != "ok"
        assert ready(n1) and ready(n2)

        # Local pub/sub still works for its connected clients.
        pub3.publish(local_topic, b"still here", qos=1)
        assert sub.wait_message(topic=local_topic, timeout=10.0).payload == b"still here"

        # A retained write needs the leader: refused (v5 PUBACK 0x80).
        writer = RawClient(n3, 5)
        writer.connect(unique("writer"))
        pid = writer.publish(unique("ret"), b"x", qos=1, retain=True)
        assert writer.expect(PUBACK, 60.0, where=lambda p: p.packet_id == pid).reason_code == 0x80

        # A persistent session cannot be claimed: CONNACK 0x88 (server unavailable).
        refused = RawClient(n3, 5)
        ack = refused.connect(unique("persist"), clean=False, properties={"session_expiry": 300},
                              check=False, timeout=60.0)
        assert ack.reason_code == 0x88

        # Heal: ready again, and the majority's write is there.
        netns.heal()
        wait_for(lambda: ready(n3), 60.0, what="/readyz 200 after healing")
        probe = connect(n3, protocol=5)
        probe.subscribe(kept_topic, 1)
        assert probe.wait_message(topic=kept_topic, timeout=20.0).payload == b"written during the partition"
        for c in (sub, pub3, pub1, probe):
            c.stop()
    finally:
        for b in started:
            b.stop()
            shutil.rmtree(b.workdir, ignore_errors=True)


def status_leader_is(node) -> int | None:
    """The node id of `node` (so it can be excluded as a leader)."""
    return status(node).get("node_id") if node.alive() else None
