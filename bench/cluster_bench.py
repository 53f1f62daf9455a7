#!/usr/bin/env python3
"""Cluster benchmarks (issue 7), reported in docs/BENCHMARKS.md, never asserted.

Starts one single node and one 3-node cluster of the release binary on loopback and
measures, on this one machine:

- cross-node QoS 0 and QoS 1 1->1 throughput (publisher on node 0, subscriber on
  node 1) with `ferromq-bench --sub-addr`, as a ratio of the single node;
- subscribe churn: pipelined SUBSCRIBEs to fresh filters on every node at once, until
  all are acknowledged and replicated (a publish on another node reaches the last);
- CONNECT rate of clean sessions (single node and cluster node) and of persistent
  sessions (each one is claimed in the Raft registry);
- retained write rate (QoS 1, each acknowledged after its Raft commit);
- time to elect a new leader after `kill -9` of the leader.

The single node runs with its defaults. `--node-workers N` sets `limits.worker_threads`
on the three cluster nodes (default: their default, one runtime worker per CPU), as an
operator would when nodes share a host: three nodes on two cores otherwise run six
workers that hand every forwarded message between threads.

    cargo build --release -p ferromq -p ferromq-bench
    python3 bench/cluster_bench.py [--duration 5] [--node-workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
os.environ.setdefault("FERROMQ_BIN", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "ferromq"))

from clusterutil import grpc_addr, leader_of, start_cluster, start_node, status  # noqa: E402
from conftest import start_broker  # noqa: E402
from mqttclient import encode_connect, encode_publish, encode_subscribe  # noqa: E402


def bench_bin() -> str:
    return os.environ.get("FERROMQ_TEST_BENCH_BIN") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "ferromq-bench")


def loader(scenario: str, addr: str, sub_addr: str | None, duration: float) -> dict:
    cmd = [bench_bin(), scenario, "--addr", addr, "--json", "--duration", str(duration), "--warmup", "2"]
    if sub_addr:
        cmd += ["--sub-addr", sub_addr]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- a minimal asyncio MQTT 3.1.1 client (the test suite's encoders) ------------------

async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    mult, n = 1, 0
    while True:
        b = (await reader.readexactly(1))[0]
        n += (b & 127) * mult
        mult *= 128
        if not b & 128:
            break
    return first, await reader.readexactly(n)


async def mqtt_connect(host: str, port: int, cid: str, clean: bool = True):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_connect(cid, 4, clean=clean))
    first, body = await read_packet(reader)
    if first >> 4 != 2 or body[1] != 0:
        raise RuntimeError(f"CONNACK refused: {body!r}")
    return reader, writer


def hostport(node) -> tuple[str, int]:
    return node.host, node.port


# ---- scenarios ---------------------------------------------------------------------------

async def connect_rate(node, n: int, clean: bool, concurrency: int = 64) -> float:
    host, port = hostport(node)
    sem = asyncio.Semaphore(concurrency)
    tag = os.urandom(3).hex()
    conns = []

    async def one(i):
        async with sem:
            conns.append(await mqtt_connect(host, port, f"cb-{tag}-{i}", clean))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    rate = n / (time.monotonic() - t0)
    for _, w in conns:
        w.write(b"\xe0\x00")
        w.close()
    return rate


async def subscribe_churn(nodes, per_node: int, per_conn: int = 1000) -> tuple[float, float]:
    """Returns (SUBACKed subscriptions/s, subscriptions/s until replicated). Each
    connection subscribes `per_conn` fresh filters (limits.max_subscriptions_per_client
    is 1,000 by default), pipelined; every node gets `per_node`."""
    tag = os.urandom(3).hex()
    conns = []  # (node index, reader, writer, filters)
    for k, n in enumerate(nodes):
        for c in range(max(1, per_node // per_conn)):
            r, w = await mqtt_connect(*hostport(n), f"churn-{tag}-{k}-{c}")
            conns.append((k, r, w, [f"churn/{tag}/{k}/{c}/{i}" for i in range(per_conn)]))
    t0 = time.monotonic()

    async def run(reader, writer, filters):
        for i, f in enumerate(filters):
            writer.write(encode_subscribe(i % 65535 + 1, [(f, 0)], protocol=4))
        got = 0
        while got < len(filters):
            first, body = await read_packet(reader)
            if first >> 4 == 9:
                assert body[-1] != 0x80, "subscription refused"
                got += 1

    await asyncio.gather(*(run(r, w, f) for _, r, w, f in conns))
    acked = time.monotonic() - t0
    # Replicated: a publish on the next node to each connection's last filter arrives.
    pubs = [await mqtt_connect(*hostport(n), f"churnpub-{tag}-{k}") for k, n in enumerate(nodes)]
    arrived = [asyncio.Event() for _ in conns]

    async def watch(j):
        reader = conns[j][1]
        while True:
            first, _ = await read_packet(reader)
            if first >> 4 == 3:
                arrived[j].set()
                return

    async def probe(j):
        k, _, _, filters = conns[j]
        w = pubs[(k + 1) % len(nodes)][1]
        while not arrived[j].is_set():
            w.write(encode_publish(filters[-1], b"probe", protocol=4))
            try:
                await asyncio.wait_for(arrived[j].wait(), 0.05)
            except asyncio.TimeoutError:
                continue

    watchers = [asyncio.create_task(watch(j)) for j in range(len(conns))]
    await asyncio.gather(*(probe(j) for j in range(len(conns))))
    replicated = time.monotonic() - t0
    for t in watchers:
        t.cancel()
    total = sum(len(f) for *_, f in conns)
    for _, _, w, _ in conns:
        w.close()
    for _, w in pubs:
        w.close()
    return total / acked, total / replicated


async def retained_rate(node, n: int, window: int = 64) -> float:
    reader, writer = await mqtt_connect(*hostport(node), f"ret-{os.urandom(3).hex()}")
    tag = os.urandom(3).hex()
    inflight = asyncio.Semaphore(window)
    done = 0
    finished = asyncio.Event()

    async def acks():
        nonlocal done
        while done < n:
            first, _ = await read_packet(reader)
            if first >> 4 == 4:
                done += 1
                inflight.release()
        finished.set()

    task = asyncio.create_task(acks())
    t0 = time.monotonic()
    for i in range(n):
        await inflight.acquire()
        pid = i % 65535 + 1
        writer.write(encode_publish(f"ret/{tag}/{i}", b"retained", 1, retain=True, packet_id=pid, protocol=4))
    await finished.wait()
    rate = n / (time.monotonic() - t0)
    task.cancel()
    writer.close()
    return rate


def election_time(nodes) -> float:
    leader = leader_of(nodes)
    old = status(leader)["node_id"]
    survivors = [n for n in nodes if n is not leader]
    t0 = time.monotonic()
    leader.stop(signal.SIGKILL)
    while time.monotonic() - t0 < 30:
        seen = {status(n).get("leader") for n in survivors}
        if len(seen) == 1 and seen.pop() not in (None, 0, old):
            return time.monotonic() - t0
        time.sleep(0.01)
    raise TimeoutError("no new leader within 30 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connects", type=int, default=3000)
    ap.add_argument("--persistent-connects", type=int, default=1000)
    ap.add_argument("--churn", type=int, default=5000, help="subscriptions per node")
    ap.add_argument("--retained", type=int, default=3000)
    ap.add_argument("--node-workers", type=int, default=0,
                    help="limits.worker_threads of the cluster nodes (0 = their default)")
    args = ap.parse_args()
    results = {}
    started = []
    try:
        single = start_broker("", env={"FERROMQ_LOG_LEVEL": "warn"})
        started.append(single)
        addr1 = f"{single.host}:{single.port}"
        for sc in ("qos0-1to1", "qos1-1to1"):
            results[f"single {sc} msg/s"] = loader(sc, addr1, None, args.duration)["delivered_per_s"]
        results["single clean connects/s"] = asyncio.run(connect_rate(single, args.connects, True))
        results["single persistent connects/s"] = asyncio.run(connect_rate(single, args.persistent_connects, False))
        results["single retained QoS 1 writes/s"] = asyncio.run(retained_rate(single, args.retained))
        single.stop()

        node_env = {"FERROMQ_LOG_LEVEL": "warn"}
        if args.node_workers:
            node_env["FERROMQ_LIMITS_WORKER_THREADS"] = str(args.node_workers)
        nodes = start_cluster(3, started, extra_env=node_env)
        a, b = (f"{n.host}:{n.port}" for n in nodes[:2])
        for sc in ("qos0-1to1", "qos1-1to1"):
            r = loader(sc, a, b, args.duration)
            results[f"cross-node {sc} msg/s"] = r["delivered_per_s"]
            results[f"cross-node {sc} lost"] = r.get("lost")
        results["cluster clean connects/s"] = asyncio.run(connect_rate(nodes[2], args.connects, True))
        results["cluster persistent connects/s"] = asyncio.run(connect_rate(nodes[2], args.persistent_connects, False))
        acked, replicated = asyncio.run(subscribe_churn(nodes, args.churn))
        results["subscribe churn (SUBACKed) subs/s"] = acked
        results["subscribe churn (replicated) subs/s"] = replicated
        results["cluster retained QoS 1 writes/s"] = asyncio.run(retained_rate(nodes[1], args.retained))
        results["leader election after kill -9 (s)"] = election_time(nodes)
    finally:
        for n in started:
            n.stop()
            shutil.rmtree(n.workdir, ignore_errors=True)
    for sc in ("qos0-1to1", "qos1-1to1"):
        s, c = results.get(f"single {sc} msg/s"), results.get(f"cross-node {sc} msg/s")
        if s and c:
            results[f"cross-node/single {sc}"] = c / s
    s, c = results.get("single clean connects/s"), results.get("cluster clean connects/s")
    if s and c:
        results["cluster/single clean connects"] = c / s
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v:,.2f}" if isinstance(v, float) else f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
