//! The state plane across real in-process nodes (gRPC on 127.0.0.1, port 0).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ferromq_cluster::RouteMatch;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_routes_retained_and_sessions() {
    let base = tempfile::tempdir().unwrap();
    let nodes = cluster_of(base.path(), 3, 3).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_eq!(voters(n1).len(), 3, "three voters");
    let ids: Vec<u64> = nodes.iter().map(|n| n.cluster.node_id()).collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);

    // Routes: ref-counted, visible on the other nodes, never reported for self.
    n1.cluster.route_add("sensors/+/temp", true);
    n1.cluster.route_add("sensors/+/temp", true);
    n1.cluster.shared_add("g1", "jobs/#");
    wait_until("route on n2 and n3", T, || {
        remote_routes(n2, "sensors/a/temp") == vec![ids[0]]
            && remote_routes(n3, "sensors/a/temp") == vec![ids[0]]
    })
    .await;
    assert!(
        remote_routes(n1, "sensors/a/temp").is_empty(),
        "self excluded"
    );
    assert!(remote_routes(n2, "$SYS/a/temp").is_empty());
    wait_until("shared group on n3", T, || {
        let mut out = Vec::new();
        n3.cluster.remote_shared("jobs/1", &mut out);
        out == vec![("g1".to_string(), "jobs/#".to_string(), vec![ids[0]])]
    })
    .await;
    n1.cluster.route_remove("sensors/+/temp", true);
    n2.cluster.route_add("other", true);
    wait_until("n2's route on n1", T, || {
        remote_routes(n1, "other") == vec![ids[1]]
    })
    .await;
    assert_eq!(
        remote_routes(n2, "sensors/a/temp"),
        vec![ids[0]],
        "one local subscriber left"
    );
    n1.cluster.route_remove("sensors/+/temp", true);
    wait_until("route gone", T, || {
        remote_routes(n2, "sensors/a/temp").is_empty()
    })
    .await;

    // A route held only by sessions that end with their connection replicates as
    // transient (publishers elsewhere need not wait for n1); the first persistent
    // subscriber makes it persistent, the last one leaving transient again.
    let on_n1 = |transient| {
        vec![RouteMatch {
            node: ids[0],
            transient,
        }]
    };
    n1.cluster.route_add("t/+", false);
    wait_until("transient route on n2", T, || {
        route_matches(n2, "t/1") == on_n1(true)
    })
    .await;
    n1.cluster.route_add("t/+", true);
    wait_until("persistent route on n2", T, || {
        route_matches(n2, "t/1") == on_n1(false)
    })
    .await;
    n1.cluster.route_remove("t/+", true);
    wait_until("transient again on n2", T, || {
        route_matches(n2, "t/1") == on_n1(true)
    })
    .await;
    n1.cluster.route_remove("t/+", false);
    wait_until("transient route gone", T, || {
        route_matches(n2, "t/1").is_empty()
    })
    .await;

    // Retained: set on one node, read on another after a read barrier; no misses.
    let started = Instant::now();
    for i in 0..200u32 {
        let writer = &nodes[(i % 3) as usize];
        let reader = &nodes[((i + 1) % 3) as usize];
        let value = Bytes::from(format!("v{i}"));
        writer
            .cluster
            .retained_set("r/topic", Some(value.clone()), 0)
            .await
            .unwrap();
        reader.cluster.read_barrier().await.unwrap();
        assert_eq!(
            reader.cluster.retained_get("r/topic"),
            Some(value),
            "iteration {i}"
        );
    }
    eprintln!("200 retained set+barrier rounds in {:?}", started.elapsed());
    // Concurrent barriers share read-index rounds and all complete.
    let barriers = (0..50).map(|_| n2.cluster.read_barrier());
    assert!(
        futures::future::join_all(barriers)
            .await
            .iter()
            .all(|r| r.is_ok())
    );
    n2.cluster.retained_set("r/topic", None, 0).await.unwrap();
    n3.cluster.read_barrier().await.unwrap();
    assert_eq!(n3.cluster.retained_get("r/topic"), None);
    assert_eq!(
        n3.local.retained.lock().get("r/topic"),
        Some(&None),
        "broker told about the clear"
    );
    assert!(*n3.local.retained_calls.lock() >= 200);

    // Retained expiry: the leader sweeps expired messages out of the replicated state.
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 300;
    n1.cluster
        .retained_set("short/lived", Some(Bytes::from_static(b"x")), soon)
        .await
        .unwrap();
    n3.cluster.read_barrier().await.unwrap();
    assert!(n3.cluster.retained_get("short/lived").is_some());
    wait_until("expired retained message swept", T, || {
        n3.cluster.retained_get("short/lived").is_none()
    })
    .await;
    assert_eq!(n3.local.retained.lock().get("short/lived"), Some(&None));

    // Sessions: ownership moves; the previous owner is reported.
    assert_eq!(n1.cluster.session_claim("c1", 60).await.unwrap(), None);
    assert_eq!(
        n1.cluster.session_claim("c1", 60).await.unwrap(),
        None,
        "own claim again"
    );
    assert_eq!(
        n2.cluster.session_claim("c1", 60).await.unwrap(),
        Some(ids[0])
    );
    n3.cluster.read_barrier().await.unwrap();
    assert_eq!(n3.cluster.session_owner("c1"), Some(ids[1]));
    n1.cluster.session_release("c1"); // not the owner: no effect
    n2.cluster.session_release("c1");
    wait_until("session released", T, || {
        n3.cluster.session_owner("c1").is_none()
    })
    .await;

    // Status and readiness.
    let st = n2.cluster.status();
    assert_eq!(st.members.len(), 3);
    assert!(
        st.members
            .iter()
            .all(|m| m.role == "voter" && !m.addr.is_empty())
    );
    assert!(serde_json::to_string(&st).unwrap().contains("\"role\""));
    wait_until("all ready", T, || {
        nodes.iter().all(|n| n.cluster.is_ready())
    })
    .await;
    let reg = prometheus::Registry::new();
    n1.cluster.register_metrics(&reg);
    let names: Vec<String> = reg.gather().iter().map(|f| f.name().to_string()).collect();
    assert!(
        names.contains(&"ferromq_cluster_raft_term".to_string()),
        "{names:?}"
    );

    for n in &nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_and_restart_from_disk() {
    let base = tempfile::tempdir().unwrap();
    let mut nodes = cluster_of(base.path(), 3, 3).await;
    let leader = agreed_leader(&nodes.iter().collect::<Vec<_>>()).unwrap();
    let li = nodes
        .iter()
        .position(|n| n.cluster.node_id() == leader)
        .unwrap();
    let old = nodes.remove(li);
    old.cluster.route_add("before/crash", true);
    old.cluster
        .retained_set("keep", Some(Bytes::from_static(b"1")), 0)
        .await
        .unwrap();
    wait_until("leader's route replicated", T, || {
        remote_routes(&nodes[0], "before/crash") == vec![leader]
    })
    .await;

    // Kill the leader: a new one within 5 s, and it keeps accepting proposals.
    old.cluster.shutdown().await;
    let killed = Instant::now();
    let rest: Vec<&Node> = nodes.iter().collect();
    wait_until("new leader", Duration::from_secs(5), || {
        agreed_leader(&rest).is_some_and(|l| l != leader)
    })
    .await;
    eprintln!("new leader after {:?}", killed.elapsed());
    nodes[0]
        .cluster
        .retained_set("after", Some(Bytes::from_static(b"2")), 0)
        .await
        .unwrap();
    nodes[1].cluster.route_add("after/failover", true);

    // Restart the old leader from its directory: same id, catches up, no re-join.
    let dir = old.dir.clone();
    let old_id = old.cluster.node_id();
    let addr = old.cluster.grpc_addr();
    drop(old);
    // On another port: the node sends its new address to the leader, which updates
    // its member record and replicates to it again.
    let back = start(&dir, Spec::default()).await;
    assert_ne!(back.cluster.grpc_addr(), addr);
    let new_addr = back.cluster.grpc_addr().to_string();
    wait_until("member record updated", T, || {
        nodes[0]
            .cluster
            .status()
            .members
            .iter()
            .any(|m| m.id == old_id && m.addr == new_addr)
    })
    .await;
    assert_eq!(back.cluster.node_id(), old_id, "node id persisted");
    back.cluster.read_barrier().await.unwrap();
    assert_eq!(
        back.cluster.retained_get("after"),
        Some(Bytes::from_static(b"2"))
    );
    assert_eq!(
        back.cluster.retained_get("keep"),
        Some(Bytes::from_static(b"1"))
    );
    assert_eq!(
        back.local.retained.lock().get("keep"),
        Some(&Some(Bytes::from_static(b"1")))
    );
    wait_until("route after failover seen by restarted node", T, || {
        remote_routes(&back, "after/failover") == vec![nodes[1].cluster.node_id()]
    })
    .await;
    // Its own replicated route survived; the broker restored no session: reconcile drops it.
    wait_until("own route still replicated", T, || {
        remote_routes(&nodes[0], "before/crash").contains(&old_id)
    })
    .await;
    back.cluster.routes_reconcile();
    wait_until("stale own route removed", T, || {
        remote_routes(&nodes[0], "before/crash").is_empty()
    })
    .await;
    wait_until("restarted node ready", T, || back.cluster.is_ready()).await;
    assert_eq!(back.cluster.status().members.len(), 3);

    // Leadership transfer hands over to another voter.
    let all: Vec<&Node> = nodes.iter().chain(std::iter::once(&back)).collect();
    let leader = agreed_leader(&all).unwrap();
    let ln = all.iter().find(|n| n.cluster.node_id() == leader).unwrap();
    ln.cluster.transfer_leadership().await.unwrap();
    wait_until("leadership moved", T, || {
        agreed_leader(&all).is_some_and(|l| l != leader)
    })
    .await;
    back.cluster
        .retained_set("after-transfer", Some(Bytes::from_static(b"3")), 0)
        .await
        .unwrap();

    back.cluster.shutdown().await;
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_gets_state_by_snapshot_and_removal_promotes_it() {
    let base = tempfile::tempdir().unwrap();
    // Small snapshot threshold: the 4th node must catch up from a snapshot.
    let mut tun = tuning();
    tun.snapshot_logs = 20;
    tun.keep_logs = 0;
    let n1 = start(
        &base.path().join("n1"),
        Spec {
            tuning: tun.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut nodes = vec![n1];
    for i in 2..=3 {
        let s = Spec {
            seeds: seed(&nodes[0]),
            tuning: tun.clone(),
            ..Default::default()
        };
        nodes.push(start(&base.path().join(format!("n{i}")), s).await);
    }
    wait_until("3 voters", T, || voters(&nodes[0]).len() == 3).await;
    for i in 0..60u32 {
        nodes[0]
            .cluster
            .retained_set(&format!("t/{i}"), Some(Bytes::from(format!("{i}"))), 0)
            .await
            .unwrap();
    }
    nodes[1].cluster.route_add("from/two", true);
    wait_until("route replicated", T, || {
        !remote_routes(&nodes[0], "from/two").is_empty()
    })
    .await;

    // Node 4 never builds a snapshot itself: a snapshot file there was installed.
    let mut tun4 = tun.clone();
    tun4.snapshot_logs = 100_000;
    let s = Spec {
        seeds: seed(&nodes[2]),
        tuning: tun4,
        ..Default::default()
    };
    let n4 = start(&base.path().join("n4"), s).await;
    let id4 = n4.cluster.node_id();
    wait_until("4th node is a learner", T, || {
        learners(&nodes[0]) == vec![id4]
    })
    .await;
    n4.cluster.read_barrier().await.unwrap();
    assert_eq!(
        n4.cluster.retained_get("t/59"),
        Some(Bytes::from_static(b"59"))
    );
    assert_eq!(
        n4.local.retained.lock().len(),
        60,
        "broker told about every retained message"
    );
    assert_eq!(
        remote_routes(&n4, "from/two"),
        vec![nodes[1].cluster.node_id()]
    );
    assert!(
        n4.dir.join("cluster/snapshot.bin").exists(),
        "caught up through InstallSnapshot"
    );
    nodes.push(n4);

    // Remove a voter (node 2, through node 3): the learner is promoted, node 2's
    // routes are forgotten.
    let id2 = nodes[1].cluster.node_id();
    nodes[2].cluster.remove(id2).await.unwrap();
    wait_until("learner promoted", T, || {
        let v = voters(&nodes[0]);
        v.len() == 3 && v.contains(&id4) && !v.contains(&id2)
    })
    .await;
    wait_until("removed node's routes dropped", T, || {
        remote_routes(&nodes[0], "from/two").is_empty()
    })
    .await;
    let removed = nodes.remove(1);
    removed.cluster.shutdown().await;

    // The cluster of {1, 3, 4} keeps working.
    nodes[2]
        .cluster
        .retained_set("post", Some(Bytes::from_static(b"x")), 0)
        .await
        .unwrap();
    nodes[0].cluster.read_barrier().await.unwrap();
    assert_eq!(
        nodes[0].cluster.retained_get("post"),
        Some(Bytes::from_static(b"x"))
    );

    // A node leaves on its own.
    let id4 = nodes[2].cluster.node_id();
    nodes[2].cluster.leave().await.unwrap();
    wait_until("left", T, || {
        !nodes[0]
            .cluster
            .status()
            .members
            .iter()
            .any(|m| m.id == id4)
    })
    .await;
    let left = nodes.remove(2);
    left.cluster.shutdown().await;

    // The leader leaves: the last node takes over and keeps accepting writes.
    let pair: Vec<&Node> = nodes.iter().collect();
    wait_until("leader of two", T, || agreed_leader(&pair).is_some()).await;
    let leader = agreed_leader(&pair).unwrap();
    let li = nodes
        .iter()
        .position(|n| n.cluster.node_id() == leader)
        .unwrap();
    nodes[li].cluster.leave().await.unwrap();
    let last = &nodes[1 - li];
    wait_until("single member left", T, || {
        last.cluster.status().members.len() == 1
            && last.cluster.status().leader == Some(last.cluster.node_id())
    })
    .await;
    last.cluster
        .retained_set("alone", Some(Bytes::from_static(b"1")), 0)
        .await
        .unwrap();
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_cluster_refuses_a_node_from_another_ca() {
    let base = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&base.path().join("pki"));
    let n1 = start(
        &base.path().join("n1"),
        Spec {
            tls: Some(pki.tls("ca", "node")),
            ..Default::default()
        },
    )
    .await;
    let n2 = start(
        &base.path().join("n2"),
        Spec {
            seeds: seed(&n1),
            tls: Some(pki.tls("ca", "node")),
            ..Default::default()
        },
    )
    .await;
    wait_until("two members over mTLS", T, || voters(&n1).len() == 2).await;
    n1.cluster.route_add("secure/#", true);
    wait_until("route over mTLS", T, || {
        !remote_routes(&n2, "secure/x").is_empty()
    })
    .await;

    // Its own certificate from another CA, trusting the cluster's CA: refused.
    let intruder = start(
        &base.path().join("n3"),
        Spec {
            seeds: seed(&n1),
            tls: Some(pki.tls("ca", "intruder")),
            bootstrap: ferromq_cluster::Bootstrap::Never,
            ..Default::default()
        },
    )
    .await;
    // `start` spent its 5 s join window failing the handshake (its observation window).
    assert_eq!(
        n1.cluster.status().members.len(),
        2,
        "intruder not admitted"
    );
    assert!(!intruder.cluster.is_ready());
    assert!(remote_routes(&intruder, "secure/x").is_empty());
    intruder.cluster.shutdown().await;
    n1.cluster.shutdown().await;
    n2.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_auto_bootstrap_forms_one_cluster() {
    let base = tempfile::tempdir().unwrap();
    // Reserve three loopback ports, then start all nodes at once, each seeded with
    // all three addresses (as a static config or a headless service would).
    let addrs: Vec<std::net::SocketAddr> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let seeds: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let starts = addrs.iter().enumerate().map(|(i, a)| {
        let dir = base.path().join(format!("n{i}"));
        let spec = Spec {
            listen: Some(*a),
            seeds: seeds.clone(),
            ..Default::default()
        };
        async move { start(&dir, spec).await }
    });
    let nodes: Vec<Node> = futures::future::join_all(starts).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until("one cluster of three", Duration::from_secs(15), || {
        agreed_leader(&refs).is_some() && refs.iter().all(|n| voters(n).len() == 3)
    })
    .await;
    nodes[2].cluster.route_add("x/#", true);
    wait_until("route everywhere", T, || {
        remote_routes(&nodes[0], "x/1") == vec![nodes[2].cluster.node_id()]
    })
    .await;
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}
