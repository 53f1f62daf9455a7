"""The Compose cluster under failure (issue 8). NOT IMPLEMENTED YET.

These scenarios need the cluster layer (issue 7: `[cluster]` config, Raft membership,
forwarding); until it lands the broker refuses FERROMQ_CLUSTER_* variables (exit 78),
so the Compose file cannot come up. Each test below is a placeholder that states the
scenario and is skipped; none of them has been run or passes.
"""

import pytest

pytestmark = pytest.mark.skip(reason="needs the cluster layer (issue 7); scenarios written, not implemented")


def test_cluster_comes_up_and_every_node_becomes_ready():
    """`docker-compose up -d` from ferromq:local; all three /readyz 200 (joined and caught
    up); node 0 bootstrapped, 1 and 2 joined; 3 voters."""


def test_pub_sub_across_containers():
    """Subscriber on ferromq-0, publisher on ferromq-2 (QoS 0/1/2, retained read-your-writes
    from a third node)."""


def test_docker_kill_of_a_node_under_qos1_load_and_its_return():
    """`docker kill ferromq-1` while publishers send QoS 1 through the other nodes: zero
    acknowledged messages lost; ferromq-1 restarts with its volume and catches up."""


def test_partition_with_docker_network_disconnect():
    """`docker network disconnect` one node: the minority keeps local pub/sub for connected
    clients, refuses what needs Raft, /readyz says so; healed, it converges."""


def test_rolling_restart_one_container_at_a_time():
    """Restart each container in turn with SIGTERM (drain: DISCONNECT 0x8B): clients on the
    restarting node reconnect elsewhere, zero acknowledged messages lost."""


def test_scale_3_to_5_to_3_removes_departed_members():
    """Add ferromq-3 and ferromq-4 (learners), then remove them: the leader drops them from
    membership after the grace period; no client-visible loss."""
