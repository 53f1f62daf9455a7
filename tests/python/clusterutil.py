"""Start and inspect ferromq clusters of real processes on loopback.

Each node is a `ferromq` process with its own data directory and ephemeral ports
(MQTT, HTTP, cluster gRPC; the ready file reports them). The first node bootstraps
(`bootstrap = always`), the others join through it (`bootstrap = never`, seeds = the
first node's gRPC address). `wait_joined` waits until every node's `/readyz` says ready
and its status lists every member.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from conftest import Broker, http_url, start_broker, wait_for


ADMIN_TOKEN = "cluster-test-token"


def grpc_addr(node: Broker) -> str:
    return next(l["addr"] for l in node.listeners if l["protocol"] == "grpc")


def node_env(seeds: list[str], bootstrap: str, extra: dict | None = None) -> dict:
    env = {
        "FERROMQ_PERSISTENCE_ENABLED": "true",
        "FERROMQ_CLUSTER_ENABLED": "true",
        "FERROMQ_CLUSTER_LISTEN": "127.0.0.1:0",
        "FERROMQ_CLUSTER_SEEDS": ",".join(seeds),
        "FERROMQ_CLUSTER_BOOTSTRAP": bootstrap,
        "FERROMQ_CLUSTER_LEADER_LOST_TIMEOUT": "3s",
        # The admin API from a non-loopback peer (a node in a network namespace).
        "FERROMQ_HTTP_TOKEN": ADMIN_TOKEN,
    }
    env.update(extra or {})
    return env


def start_node(seeds: list[str], bootstrap: str, *, workdir=None, extra_env: dict | None = None,
               config: str = "", args: list[str] | None = None, wrap: list[str] | None = None) -> Broker:
    return start_broker(config, env=node_env(seeds, bootstrap, extra_env), workdir=workdir, timeout=60.0,
                        args=args, wrap=wrap)


def start_cluster(n: int, started: list, *, extra_env: dict | None = None, config: str = "") -> list[Broker]:
    """Starts `n` nodes (appending each to `started` at once, for cleanup) and waits
    until all are joined and ready."""
    first = start_node([], "always", extra_env=extra_env, config=config)
    started.append(first)
    nodes = [first]
    for _ in range(n - 1):
        node = start_node([grpc_addr(first)], "never", extra_env=extra_env, config=config)
        started.append(node)
        nodes.append(node)
    wait_joined(nodes)
    return nodes


def get_json(node: Broker, path: str):
    try:
        req = urllib.request.Request(http_url(node) + path,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body or b"null")
        except json.JSONDecodeError:
            return e.code, None
    except (urllib.error.URLError, OSError):
        return None, None


def status(node: Broker) -> dict:
    code, body = get_json(node, "/api/v1/cluster")
    return body if code == 200 else {}


def ready(node: Broker) -> bool:
    code, _ = get_json(node, "/readyz")
    return code == 200


def wait_joined(nodes: list[Broker], timeout: float = 60.0, members: int | None = None):
    want = members if members is not None else len(nodes)

    def joined():
        for node in nodes:
            if not ready(node):
                return False
            s = status(node)
            if len(s.get("members", [])) < want or s.get("leader") in (None, 0):
                return False
        return True

    try:
        wait_for(joined, timeout, what=f"{len(nodes)} nodes joined and ready")
    except TimeoutError as e:
        seen = [(n.listeners, get_json(n, "/readyz"), status(n)) for n in nodes]
        raise TimeoutError(f"{e}; nodes: {seen}") from None


def leader_of(nodes: list[Broker]) -> Broker:
    """The node that currently leads (asked of every live node; they must agree)."""
    def find():
        ids = {status(n).get("leader") for n in nodes if n.alive()}
        ids.discard(None)
        if len(ids) != 1:
            return None
        lid = ids.pop()
        for n in nodes:
            if n.alive() and status(n).get("node_id") == lid:
                return n
        return None

    return wait_for(find, 30.0, what="one agreed leader")
