"""The Compose cluster (deploy/compose/docker-compose.yml) from ferromq:local, under
failure (issue 8).

One Compose project for the module (unique project, network and volume names; ports
on 127.0.0.1 only; `down -v` at the end). Every test starts by waiting until the three
nodes are ready with one leader; a test that leaves the cluster broken makes the next
one recreate it (`fresh` below). Logs of the project are written to
$FERROMQ_COMPOSE_LOGS (default /tmp/ferromq-compose-<project>.log) at the end.

Timings printed by the tests (pytest -s) are what the report quotes.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from .composeutil import ComposeCluster, QoS1Load, wait_for
from .test_compose import compose_cmd

from mqttclient import connect  # noqa: E402  (tests/python, on sys.path via composeutil)

NODES = ["ferromq-0", "ferromq-1", "ferromq-2"]


@pytest.fixture(scope="module")
def cluster(image):
    cmd = compose_cmd()
    if cmd is None:
        pytest.skip("needs Docker Compose (docker compose or docker-compose)")
    c = ComposeCluster(image, cmd)
    started = time.monotonic()
    try:
        c.up(*NODES)
        c.wait_cluster(NODES, members=3, timeout=90)
        print(f"\n[compose] {c.project}: 3 nodes ready in {time.monotonic() - started:.1f} s")
        yield c
    finally:
        path = os.environ.get("FERROMQ_COMPOSE_LOGS", f"/tmp/ferromq-compose-{c.project}.log")
        try:
            with open(path, "w") as f:
                f.write(c.logs(tail=2000))
            print(f"[compose] logs in {path}")
        except OSError:
            pass
        c.down()


@pytest.fixture
def healthy(cluster):
    """The shared cluster, ready; recreated from scratch if a previous test broke it."""
    try:
        cluster.wait_cluster(NODES, members=3, timeout=30)
    except TimeoutError as e:
        print(f"[compose] cluster not healthy ({e}); recreating it")
        cluster.compose("down", "-v", "--remove-orphans", "-t", "5", check=False)
        cluster._cids.clear()
        cluster.up(*NODES)
        cluster.wait_cluster(NODES, members=3, timeout=90)
    return cluster


def route_ready(pub, sub, topic: str, timeout: float = 30.0):
    """Markers from `pub` until `sub` got one (its route reached the publisher's node)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(topic, b"marker", qos=0)
        try:
            sub.wait_messages(1, 0.3, topic=topic)
            time.sleep(0.3)  # not a wait for a condition: let stray markers land before clear()
            sub.clear()
            return
        except TimeoutError:
            continue
    raise TimeoutError(f"route for {topic} never reached the publisher's node")


# --------------------------------------------------------------------------------------
# 1-2: the shared cluster
# --------------------------------------------------------------------------------------

def test_cluster_comes_up_and_every_node_becomes_ready(healthy):
    st = healthy.wait_cluster(NODES, members=3)
    ids = {s["node_id"] for s in st.values()}
    assert len(ids) == 3
    leaders = [s for s, v in st.items() if v["role"] == "leader"]
    assert len(leaders) == 1, st
    for svc, s in st.items():
        assert {m["id"] for m in s["members"]} == ids
        assert sorted(m["role"] for m in s["members"]) == ["voter"] * 3
        assert {m["addr"] for m in s["members"]} == {f"{n}.ferromq-headless:7946" for n in NODES}
        # Compose's health check is the chart's readiness probe (`ctl health --ready`).
    wait_for(lambda: all(
        healthy.docker("inspect", "-f", "{{.State.Health.Status}}", healthy.cid(n)).stdout.strip() == "healthy"
        for n in NODES), 60, "Docker health checks healthy")
    # Runs as the image's non-root user in Compose too.
    for n in NODES:
        uids = [r.split()[0] for r in healthy.docker("top", healthy.cid(n), "-o", "uid,pid").stdout.splitlines()[1:]]
        assert uids == ["10001"], (n, uids)
    print(f"leader {leaders[0]}, term {st[leaders[0]]['term']}")


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_across_containers(healthy, qos):
    base = f"compose/{uuid.uuid4().hex[:8]}"
    sub = connect(healthy.mqtt("ferromq-0"), protocol=5)
    sub.subscribe(f"{base}/#", qos)
    pub = connect(healthy.mqtt("ferromq-2"), protocol=4)
    route_ready(pub, sub, f"{base}/marker")
    n = 50
    for i in range(n):
        pub.publish(f"{base}/{i}", str(i).encode(), qos=qos)
    got = sub.wait_messages(n, 20.0)
    assert sorted(int(m.payload) for m in got) == list(range(n))
    if qos > 0:
        assert [int(m.payload) for m in got] == list(range(n)), "in order, no duplicates"
        assert {m.qos for m in got} == {qos}
    sub.stop()
    pub.stop()


def test_retained_read_your_writes_across_containers(healthy):
    topic = f"compose/ryw/{uuid.uuid4().hex[:8]}"
    pub = connect(healthy.mqtt("ferromq-0"), protocol=5)
    sub = connect(healthy.mqtt("ferromq-2"), protocol=5)
    iterations, misses = 100, []
    started = time.monotonic()
    for i in range(iterations):
        payload = f"v{i}".encode()
        pub.publish(topic, payload, qos=1, retain=True)  # returns after PUBACK
        sub.clear()
        sub.subscribe(topic, 1)
        got = sub.wait_message(topic=topic, timeout=10.0).payload
        if got != payload:
            misses.append((i, got))
        sub.unsubscribe(topic)
    assert not misses, f"{len(misses)} of {iterations} subscribes on ferromq-2 saw an older value: {misses[:5]}"
    print(f"{iterations} retained write/read rounds in {time.monotonic() - started:.1f} s, 0 stale")
    pub.stop()
    sub.stop()


# --------------------------------------------------------------------------------------
# 3: docker kill
# --------------------------------------------------------------------------------------

def test_docker_kill_of_a_node_under_qos1_load_and_its_return(healthy):
    c = healthy
    victim = c.leader(NODES, members=3)  # the hardest case: the leader dies
    survivors = [n for n in NODES if n != victim]
    victim_id = c.status(victim)["node_id"]
    # Subscriber (persistent session) on one survivor; publishers through both survivors.
    load_cross = QoS1Load(c, [survivors[1]], [survivors[0]])
    load_local = QoS1Load(c, [survivors[0]], [survivors[1]])
    load_cross.wait_acked(50)
    load_local.wait_acked(50)
    killed_at = time.monotonic()
    c.docker("kill", c.cid(victim))
    # A new leader among the survivors; publishers keep being acknowledged.
    wait_for(lambda: all(c.status(s).get("leader") not in (None, 0, victim_id) for s in survivors),
             20, "a new leader among the survivors")
    elected = time.monotonic() - killed_at
    load_cross.wait_acked(200, timeout=60)
    load_local.wait_acked(200, timeout=60)
    # A retained write while the node is down: it must see it when it is back.
    kept = f"compose/kill/{uuid.uuid4().hex[:8]}"
    p = connect(c.mqtt(survivors[0]), protocol=5)
    p.publish(kept, b"written-while-down", qos=1, retain=True)
    p.stop()
    assert c.docker("inspect", "-f", "{{.State.Running}}", c.cid(victim)).stdout.strip() == "false"
    restart_at = time.monotonic()
    c.compose("start", victim)
    c.wait_cluster(NODES, members=3, timeout=90)
    back = time.monotonic() - restart_at
    assert c.status(victim)["node_id"] == victim_id, "same node (same volume) after the restart"
    # Through MQTT (SUBSCRIBE takes a read barrier) it is there at once ...
    sub = connect(c.mqtt(victim), protocol=5)
    sub.subscribe(kept, 1)
    assert sub.wait_message(topic=kept, timeout=10).payload == b"written-while-down"
    sub.stop()
    # ... and in the node's own store (the admin API reads it without a barrier) soon.
    wait_for(lambda: "written-while-down" in c.ctl(victim, "retained", "get", kept, check=False).stdout,
             20, "the retained write applied on the returned node")
    r1, r2 = load_cross.stop(), load_local.stop()
    print(f"killed {victim} (leader); new leader after {elected:.2f} s; back and ready {back:.1f} s after start; "
          f"cross: acked {r1['acked']} received {r1['received']} dups {r1['duplicates']} "
          f"unacked attempts {r1['unacked_attempts']}; local: acked {r2['acked']} received {r2['received']} "
          f"dups {r2['duplicates']} unacked attempts {r2['unacked_attempts']}")
    assert not r1["lost"], f"lost {len(r1['lost'])} acknowledged (pub {survivors[1]} -> sub {survivors[0]}): {r1}"
    assert not r2["lost"], f"lost {len(r2['lost'])} acknowledged (pub {survivors[0]} -> sub {survivors[1]}): {r2}"


# --------------------------------------------------------------------------------------
# 4: partition
# --------------------------------------------------------------------------------------

def test_partition_with_docker_network_disconnect(healthy):
    c = healthy
    victim = c.leader(NODES, members=3)  # cut the leader off: it must notice too
    majority = [n for n in NODES if n != victim]
    victim_id = c.status(victim)["node_id"]
    before = f"compose/part/{uuid.uuid4().hex[:8]}"
    p = connect(c.mqtt(majority[0]), protocol=5)
    p.publish(before, b"before", qos=1, retain=True)
    p.stop()
    cut_at = time.monotonic()
    c.docker("network", "disconnect", c.network, c.cid(victim))
    try:
        # The minority's readiness (asked inside: the container has no network) turns 503.
        wait_for(lambda: not c.ready_inside(victim), 20, f"{victim}'s /readyz to turn 503", 0.3)
        not_ready_after = time.monotonic() - cut_at
        r = c.ctl(victim, "health", "--ready", check=False)
        assert r.returncode != 0 and "503" in (r.stdout + r.stderr), r
        # The majority elects a leader between them and keeps committing.
        wait_for(lambda: all(c.status(s).get("leader") not in (None, 0, victim_id) for s in majority),
                 20, "a leader in the majority")
        topic = f"compose/part/{uuid.uuid4().hex[:8]}"
        writer = connect(c.mqtt(majority[0]), protocol=5)
        writer.publish(topic, b"majority-write", qos=1, retain=True)
        writer.stop()
        reader = connect(c.mqtt(majority[1]), protocol=5)
        reader.subscribe(topic, 1)
        assert reader.wait_message(topic=topic, timeout=10).payload == b"majority-write"
        reader.stop()
        assert all(c.ready(s) for s in majority), "the majority stays ready"
        # The minority does not have it.
        assert "majority-write" not in c.ctl(victim, "retained", "get", topic, check=False).stdout
    finally:
        heal_at = time.monotonic()
        c.docker("network", "connect", "--alias", f"{victim}.ferromq-headless", "--alias", victim,
                 c.network, c.cid(victim), check=False)
    wait_for(lambda: c.ready_inside(victim), 60, f"{victim} ready again after healing", 0.3)
    healed = time.monotonic() - heal_at
    c.wait_cluster(NODES, members=3, timeout=60)
    # Over MQTT through its (new) published port (SUBSCRIBE takes a read barrier) ...
    sub = connect(c.mqtt(victim), protocol=5)
    sub.subscribe(topic, 1)
    assert sub.wait_message(topic=topic, timeout=10).payload == b"majority-write"
    sub.stop()
    # ... and in its own store (admin API, no barrier).
    wait_for(lambda: "majority-write" in c.ctl(victim, "retained", "get", topic, check=False).stdout,
             20, "the majority's write applied on the healed node")
    print(f"partitioned {victim} (leader): /readyz 503 after {not_ready_after:.1f} s; "
          f"healed and ready {healed:.1f} s after reconnect; it serves the majority's write")


# --------------------------------------------------------------------------------------
# 5: rolling restart
# --------------------------------------------------------------------------------------

def test_rolling_restart_one_container_at_a_time(healthy):
    c = healthy
    # The pair roams: publisher starts on node 0, subscriber on node 1; each moves to
    # the next node when its own restarts, so the subscriber's session moves twice.
    load = QoS1Load(c, ["ferromq-0", "ferromq-1", "ferromq-2"], ["ferromq-1", "ferromq-2", "ferromq-0"])
    load.wait_acked(50)
    timings = []
    for svc in NODES:
        watcher = connect(c.mqtt(svc), protocol=5)
        t0 = time.monotonic()
        c.compose("restart", "-t", "30", svc, timeout=90)
        d = watcher.wait_disconnect(5)
        assert d.from_server and d.reason_code == 0x8B, (svc, d)
        # It reconnects to another node.
        other = NODES[(NODES.index(svc) + 1) % 3]
        watcher.broker = c.mqtt(other)
        assert watcher.connect(10).reason_code == 0
        watcher.stop()
        c.wait_cluster(NODES, members=3, timeout=90)
        timings.append((svc, round(time.monotonic() - t0, 1)))
        load.wait_acked(50, timeout=60)
    r = load.stop()
    print(f"rolling restart (restart + ready per node, s): {timings}; acked {r['acked']} received {r['received']} "
          f"dups {r['duplicates']} unacked attempts {r['unacked_attempts']}; "
          f"pub moves {r['pub_history']}; sub moves {r['sub_history']}")
    assert not r["lost"], f"lost {len(r['lost'])} acknowledged QoS 1 messages: {r}"
    moves = r["sub_history"][1:]
    assert moves, "the subscriber was moved by the restarts"
    assert all(present for _, present, _ in moves), f"the persistent session followed the client: {moves}"


# --------------------------------------------------------------------------------------
# 6: scale 3 -> 5 -> 3
# --------------------------------------------------------------------------------------

def test_scale_3_to_5_to_3_removes_departed_members(healthy):
    c = healthy
    extra = ["ferromq-3", "ferromq-4"]
    state = f"compose/scale/{uuid.uuid4().hex[:8]}"
    p = connect(c.mqtt("ferromq-1"), protocol=5)
    p.publish(state, b"replicated", qos=1, retain=True)
    p.stop()
    load = QoS1Load(c, ["ferromq-0", "ferromq-1"], ["ferromq-1", "ferromq-2"])
    t0 = time.monotonic()
    c.up(*extra)
    st = c.wait_cluster(NODES + extra, members=5, timeout=90)
    joined = time.monotonic() - t0
    roles = {m["addr"].split(".")[0]: m["role"] for m in st["ferromq-0"]["members"]}
    assert roles == {"ferromq-0": "voter", "ferromq-1": "voter", "ferromq-2": "voter",
                     "ferromq-3": "learner", "ferromq-4": "learner"}, roles
    # Learners hold the replicated state and serve clients (a client there sees the load).
    for svc in extra:
        sub = connect(c.mqtt(svc), protocol=5)
        sub.subscribe(state, 1)
        assert sub.wait_message(topic=state, timeout=20).payload == b"replicated"
        sub.stop()
    learner_sub = connect(c.mqtt("ferromq-4"), protocol=5)
    learner_sub.subscribe(load.topic, 1)
    wait_for(lambda: learner_sub.received(load.topic), 20, "the load reaching a learner's client")
    learner_sub.stop()
    load.wait_acked(50)
    # Scale back as a StatefulSet does: the pods (containers) go, and with them their
    # DNS names; the leader removes them after cluster.remove_departed_after (5 s here),
    # nobody runs `ctl cluster remove`.
    gone = {svc: st[svc]["node_id"] for svc in extra}
    t1 = time.monotonic()
    c.compose("rm", "-f", "-s", *extra, timeout=90)
    st = c.wait_cluster(NODES, members=3, timeout=90)
    removed_after = time.monotonic() - t1
    for s in st.values():
        assert sorted(m["role"] for m in s["members"]) == ["voter"] * 3
        assert not {m["id"] for m in s["members"]} & set(gone.values())
    load.wait_acked(50)
    r = load.stop()
    for svc in extra:
        c.forget(svc)
    print(f"scale out: 2 learners ready in {joined:.1f} s; departed {list(gone.values())} removed "
          f"by the leader {removed_after:.1f} s after their containers went; "
          f"load acked {r['acked']} received {r['received']} dups {r['duplicates']}")
    assert not r["lost"], f"lost {len(r['lost'])} acknowledged QoS 1 messages: {r}"
