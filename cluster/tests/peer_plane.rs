//! The data plane end to end: real tonic servers on 127.0.0.1 (port 0), one
//! `PeerPlane` per node, channels made with `connect_lazy` as the state plane will.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

use ferromq_cluster::peer::{ForwardError, PeerError, PeerOptions, PeerPlane};
use ferromq_cluster::{Forward, LocalNode, NodeId};

// ---------- a LocalNode that records ----------

struct State {
    /// Recorded when `deliver` is called (the broker hands messages to sessions there).
    delivered: Mutex<Vec<(NodeId, Forward)>>,
    /// Batches whose delivery future completed.
    completed: AtomicUsize,
    /// `deliver` futures complete only while this is true.
    gate: watch::Sender<bool>,
    sessions: Mutex<HashMap<String, Bytes>>,
    announced: Mutex<Vec<(NodeId, String, u64)>>,
    hang_take_session: AtomicBool,
    taken_by: Mutex<Vec<(String, NodeId)>>,
}

#[derive(Clone)]
struct TestNode(Arc<State>);

impl TestNode {
    fn new() -> TestNode {
        TestNode(Arc::new(State {
            delivered: Mutex::new(Vec::new()),
            completed: AtomicUsize::new(0),
            gate: watch::channel(true).0,
            sessions: Mutex::new(HashMap::new()),
            announced: Mutex::new(Vec::new()),
            hang_take_session: AtomicBool::new(false),
            taken_by: Mutex::new(Vec::new()),
        }))
    }
    fn count(&self) -> usize {
        self.0.delivered.lock().len()
    }
    fn payloads(&self) -> Vec<Bytes> {
        self.0
            .delivered
            .lock()
            .iter()
            .map(|(_, f)| f.message.clone())
            .collect()
    }
    fn set_gate(&self, open: bool) {
        self.0.gate.send_replace(open);
    }
}

impl LocalNode for TestNode {
    fn deliver(&self, from: NodeId, batch: Vec<Forward>) -> BoxFuture<'static, ()> {
        self.0
            .delivered
            .lock()
            .extend(batch.into_iter().map(|f| (from, f)));
        let state = self.0.clone();
        async move {
            let mut gate = state.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            state.completed.fetch_add(1, Ordering::SeqCst);
        }
        .boxed()
    }
    fn retained_applied(&self, _topic: &str, _message: Option<&Bytes>) {}
    fn take_session(&self, client_id: &str, to: NodeId) -> BoxFuture<'static, Option<Bytes>> {
        self.0.taken_by.lock().push((client_id.to_owned(), to));
        if self.0.hang_take_session.load(Ordering::SeqCst) {
            return futures::future::pending().boxed();
        }
        let s = self.0.sessions.lock().remove(client_id);
        futures::future::ready(s).boxed()
    }
    fn connect_announced(&self, from: NodeId, client_id: &str, connected_at_ms: u64) {
        self.0
            .announced
            .lock()
            .push((from, client_id.to_owned(), connected_at_ms));
    }
}

// ---------- nodes, servers, helpers ----------

struct Node {
    plane: PeerPlane,
    local: TestNode,
    addr: SocketAddr,
    registry: prometheus::Registry,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.plane.shutdown();
        self.server.abort();
    }
}

fn test_opts() -> PeerOptions {
    PeerOptions {
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        rpc_timeout: Duration::from_secs(3),
        ..PeerOptions::default()
    }
}

async fn start_node(id: NodeId, opts: PeerOptions) -> Node {
    let local = TestNode::new();
    let plane = PeerPlane::new(id, Arc::new(local.clone()), opts);
    let registry = prometheus::Registry::new();
    plane.register_metrics(&registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = plane.service();
    let server = tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await;
    });
    Node {
        plane,
        local,
        addr,
        registry,
        server,
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect_lazy()
}

fn connect(from: &Node, to: &Node, to_id: NodeId) {
    from.plane.set_peer(to_id, channel(to.addr));
}

fn msg(qos: u8, i: usize) -> Forward {
    Forward {
        topic: Bytes::from_static(b"t/x"),
        qos,
        message: Bytes::from(format!("m{i}")),
        shared: None,
        target: None,
    }
}

async fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

type Ack = oneshot::Receiver<Result<(), ForwardError>>;

async fn resolved(rx: Ack) -> Result<(), ForwardError> {
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("receiver resolved within 10 s")
        .expect("sender side answered")
}

fn metric(reg: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&reg.gather())
        .unwrap();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !rest.starts_with('{') {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            return rest.rsplit(' ').next().unwrap().parse().unwrap();
        }
    }
    0.0
}

// ---------- tests ----------

/// QoS 0/1/2 mixed, to two peers, arrive in order with the sender's id; QoS 1/2
/// receivers resolve Ok; metrics count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_qos_delivered_in_order_to_two_peers() {
    let a = start_node(1, test_opts()).await;
    let b = start_node(2, test_opts()).await;
    let c = start_node(3, test_opts()).await;
    connect(&a, &b, 2);
    connect(&a, &c, 3);
    assert_eq!(a.plane.peers(), vec![2, 3]);

    let n = 3000;
    let mut acks = Vec::new();
    for i in 0..n {
        let mut m = msg((i % 3) as u8, i);
        if i % 10 == 0 {
            m.shared = Some(("g".into(), "t/+".into()));
        }
        for peer in [2, 3] {
            if let Some(rx) = a.plane.forward(peer, m.clone()) {
                acks.push(rx);
            }
        }
    }
    assert_eq!(acks.len(), 2 * 2 * n / 3);
    for rx in acks {
        assert_eq!(resolved(rx).await, Ok(()));
    }
    // QoS 0 are not acknowledged individually: wait for the count.
    for node in [&b, &c] {
        wait_until("all delivered", Duration::from_secs(10), || {
            node.local.count() == n
        })
        .await;
        let got = node.local.0.delivered.lock().clone();
        for (i, (from, f)) in got.iter().enumerate() {
            assert_eq!(*from, 1);
            assert_eq!(f.message, Bytes::from(format!("m{i}")), "order at {i}");
            assert_eq!(f.qos, (i % 3) as u8);
            assert_eq!(f.topic, Bytes::from_static(b"t/x"));
            let shared = (i % 10 == 0).then(|| ("g".to_string(), "t/+".to_string()));
            assert_eq!(f.shared, shared);
        }
    }
    wait_until("sent counted", Duration::from_secs(5), || {
        metric(
            &a.registry,
            "ferromq_cluster_forwarded_messages_total",
            &[("peer", "2"), ("direction", "sent")],
        ) == n as f64
    })
    .await;
    assert_eq!(
        metric(
            &b.registry,
            "ferromq_cluster_forwarded_messages_total",
            &[("peer", "1"), ("direction", "received")]
        ),
        n as f64
    );
    assert_eq!(
        metric(&a.registry, "ferromq_cluster_peer_up", &[("peer", "3")]),
        1.0
    );
    assert_eq!(
        metric(
            &a.registry,
            "ferromq_cluster_forward_queue_depth",
            &[("peer", "2")]
        ),
        0.0
    );
}

/// A QoS 1 receiver resolves only after the peer's `deliver` future completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_ack_waits_for_delivery() {
    let a = start_node(1, test_opts()).await;
    let b = start_node(2, test_opts()).await;
    connect(&a, &b, 2);
    b.local.set_gate(false);

    let mut rx = a.plane.forward(2, msg(1, 0)).unwrap();
    wait_until("deliver called", Duration::from_secs(10), || {
        b.local.count() == 1
    })
    .await;
    // Give a premature ack every chance to arrive, then check there was none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        rx.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert_eq!(b.local.0.completed.load(Ordering::SeqCst), 0);

    b.local.set_gate(true);
    assert_eq!(resolved(rx).await, Ok(()));
    assert_eq!(b.local.0.completed.load(Ordering::SeqCst), 1);
}

/// Throughput figure (printed, not asserted): 100k QoS 1 and 100k QoS 0 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_100k() {
    let opts = PeerOptions {
        forward_queue: 200_000,
        ..test_opts()
    };
    let a = start_node(1, opts.clone()).await;
    let b = start_node(2, opts).await;
    connect(&a, &b, 2);
    // Warm the stream up.
    resolved(a.plane.forward(2, msg(1, 0)).unwrap())
        .await
        .unwrap();

    let n = 100_000;
    let payload = Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    let mut acks = Vec::with_capacity(n);
    for _ in 0..n {
        let m = Forward {
            topic: Bytes::from_static(b"bench/topic"),
            qos: 1,
            message: payload.clone(),
            shared: None,
            target: None,
        };
        acks.push(a.plane.forward(2, m).unwrap());
    }
    for rx in acks {
        assert_eq!(resolved(rx).await, Ok(()));
    }
    let qos1 = start.elapsed();

    let before = b.local.count();
    let start = Instant::now();
    for _ in 0..n {
        let m = Forward {
            topic: Bytes::from_static(b"bench/topic"),
            qos: 0,
            message: payload.clone(),
            shared: None,
            target: None,
        };
        assert!(a.plane.forward(2, m).is_none());
    }
    wait_until("100k QoS 0 delivered", Duration::from_secs(20), || {
        b.local.count() == before + n
    })
    .await;
    let qos0 = start.elapsed();
    println!(
        "THROUGHPUT peer plane (debug build, 64 B payload, loopback): QoS 1 {n} msgs in {:?} = {:.0} msg/s (all acked); QoS 0 {n} msgs in {:?} = {:.0} msg/s",
        qos1,
        n as f64 / qos1.as_secs_f64(),
        qos0,
        n as f64 / qos0.as_secs_f64()
    );
}

/// A receiving node in its own runtime, so dropping the runtime is a crash: every
/// task and socket of it goes at once.
fn start_crashable(
    id: NodeId,
    local: TestNode,
    listener: std::net::TcpListener,
) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let plane = PeerPlane::new(id, Arc::new(local), test_opts());
    let svc = plane.service();
    listener.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let _plane = plane;
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpIncoming::from(l))
            .await;
    });
    rt
}

/// Peer down, then up again on the same port: QoS 1 offered while it was down stay
/// queued and are delivered once it returns; their receivers resolve Ok. The one that
/// was in delivery at the crash is re-sent (at-least-once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_down_then_up_delivers_queued_qos1() {
    let a = start_node(1, test_opts()).await;
    let b_local = TestNode::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = start_crashable(2, b_local.clone(), listener);
    a.plane.set_peer(2, channel(addr));

    let first: Vec<Ack> = (0..10)
        .map(|i| a.plane.forward(2, msg(1, i)).unwrap())
        .collect();
    for rx in first {
        assert_eq!(resolved(rx).await, Ok(()));
    }
    // One more is in delivery (not acknowledged) when the peer crashes.
    b_local.set_gate(false);
    let mut in_delivery = a.plane.forward(2, msg(1, 10)).unwrap();
    wait_until("in delivery", Duration::from_secs(10), || {
        b_local.count() == 11
    })
    .await;
    rt.shutdown_background();
    b_local.set_gate(true);
    wait_until("peer seen down", Duration::from_secs(10), || {
        metric(&a.registry, "ferromq_cluster_peer_up", &[("peer", "2")]) == 0.0
    })
    .await;

    let mut queued: Vec<Ack> = (11..30)
        .map(|i| a.plane.forward(2, msg(1, i)).unwrap())
        .collect();
    // QoS 0 while the peer is down is dropped, counted.
    assert!(a.plane.forward(2, msg(0, 999)).is_none());
    assert_eq!(
        metric(
            &a.registry,
            "ferromq_cluster_forward_dropped_total",
            &[("peer", "2"), ("reason", "peer_down")]
        ),
        1.0
    );
    // Still waiting while the peer is away (reconnect attempts fail meanwhile).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        queued[0].try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert!(matches!(
        in_delivery.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert_eq!(
        metric(
            &a.registry,
            "ferromq_cluster_forward_queue_depth",
            &[("peer", "2")]
        ),
        19.0
    );

    let listener = std::net::TcpListener::bind(addr).unwrap();
    let rt = start_crashable(2, b_local.clone(), listener);
    assert_eq!(resolved(in_delivery).await, Ok(()));
    for rx in queued {
        assert_eq!(resolved(rx).await, Ok(()));
    }
    // At least once: the batch in delivery at the crash is re-sent (m10 twice), then
    // the queued ones in order.
    let expected: Vec<Bytes> = (0..=10)
        .chain(10..30)
        .map(|i| Bytes::from(format!("m{i}")))
        .collect();
    assert_eq!(b_local.payloads(), expected);
    assert_eq!(
        metric(&a.registry, "ferromq_cluster_peer_up", &[("peer", "2")]),
        1.0
    );
    rt.shutdown_background();
}

/// Node 1 linked to node 2 with a queue of 4 and a window of one one-message batch;
/// node 2's deliveries are held, and the first QoS 1 message (returned) sits in the
/// window, so every further offer stays in the queue.
async fn stalled_link_with_queue_of_4() -> (Node, Node, Ack) {
    let opts = PeerOptions {
        forward_queue: 4,
        batch_max: 1,
        window: 1,
        ..test_opts()
    };
    let a = start_node(1, opts.clone()).await;
    let b = start_node(2, opts).await;
    connect(&a, &b, 2);
    b.local.set_gate(false);
    let first = a.plane.forward(2, msg(1, 0)).unwrap();
    wait_until("first in delivery", Duration::from_secs(10), || {
        b.local.count() == 1
    })
    .await;
    (a, b, first)
}

/// Queue full: QoS 1 refused at once with QueueFull, QoS 0 dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_refuses_qos1_and_drops_qos0() {
    let (a, b, first) = stalled_link_with_queue_of_4().await;
    let queued: Vec<Ack> = (1..5)
        .map(|i| a.plane.forward(2, msg(1, i)).unwrap())
        .collect();

    let mut refused = a.plane.forward(2, msg(1, 5)).unwrap();
    assert_eq!(refused.try_recv(), Ok(Err(ForwardError::QueueFull)));
    assert!(a.plane.forward(2, msg(0, 6)).is_none());
    assert_eq!(
        metric(
            &a.registry,
            "ferromq_cluster_forward_dropped_total",
            &[("peer", "2"), ("reason", "queue_full")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &a.registry,
            "ferromq_cluster_forward_queue_depth",
            &[("peer", "2")]
        ),
        4.0
    );

    b.local.set_gate(true);
    assert_eq!(resolved(first).await, Ok(()));
    for rx in queued {
        assert_eq!(resolved(rx).await, Ok(()));
    }
    let expected: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(b.local.payloads(), expected);
}

/// A QoS 1 message nobody waits for (transient routes only) is queued without a
/// receiver, sent and acknowledged like any other; once the queue is half full the
/// caller gets a receiver to wait on again (backpressure), and a full queue still
/// refuses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unawaited_forwards_wait_again_once_the_queue_is_half_full() {
    let (a, b, first) = stalled_link_with_queue_of_4().await;

    // Queue of 4: free slots 4, 3 and 2 are not backlogged.
    for i in 1..4 {
        assert!(
            a.plane.forward_unawaited(2, msg(1, i)).is_none(),
            "message {i}"
        );
    }
    // One slot left: less than half free, so the caller waits.
    let pressed = a.plane.forward_unawaited(2, msg(1, 4)).unwrap();
    let mut refused = a.plane.forward_unawaited(2, msg(1, 5)).unwrap();
    assert_eq!(refused.try_recv(), Ok(Err(ForwardError::QueueFull)));
    let mut unknown = a.plane.forward_unawaited(9, msg(1, 6)).unwrap();
    assert_eq!(unknown.try_recv(), Ok(Err(ForwardError::UnknownPeer(9))));
    assert_eq!(
        metric(
            &a.registry,
            "ferromq_cluster_forward_unawaited_total",
            &[("peer", "2")]
        ),
        3.0
    );

    b.local.set_gate(true);
    assert_eq!(resolved(first).await, Ok(()));
    assert_eq!(resolved(pressed).await, Ok(()));
    let expected: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("m{i}"))).collect();
    wait_until("all delivered", Duration::from_secs(10), || {
        b.local.payloads() == expected
    })
    .await;
}

/// remove_peer answers queued and unacknowledged QoS 1 with PeerRemoved; the node is
/// then unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_peer_fails_pending_with_peer_removed() {
    let a = start_node(1, test_opts()).await;
    let b = start_node(2, test_opts()).await;
    connect(&a, &b, 2);
    b.local.set_gate(false);
    let in_flight = a.plane.forward(2, msg(1, 0)).unwrap();
    wait_until("in delivery", Duration::from_secs(10), || {
        b.local.count() == 1
    })
    .await;

    // And a peer that never answers: everything stays queued.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    a.plane.set_peer(9, channel(dead_addr));
    let queued: Vec<Ack> = (0..3)
        .map(|i| a.plane.forward(9, msg(2, i)).unwrap())
        .collect();

    a.plane.remove_peer(2);
    a.plane.remove_peer(9);
    assert_eq!(resolved(in_flight).await, Err(ForwardError::PeerRemoved));
    for rx in queued {
        assert_eq!(resolved(rx).await, Err(ForwardError::PeerRemoved));
    }
    assert!(a.plane.peers().is_empty());
    assert_eq!(
        resolved(a.plane.forward(9, msg(1, 0)).unwrap()).await,
        Err(ForwardError::UnknownPeer(9))
    );
    assert!(a.plane.forward(9, msg(0, 0)).is_none());
    assert_eq!(
        metric(
            &a.registry,
            "ferromq_cluster_forward_dropped_total",
            &[("peer", "9"), ("reason", "unknown_peer")]
        ),
        2.0
    );
    // A removed peer's series are gone.
    assert_eq!(
        metric(&a.registry, "ferromq_cluster_peer_up", &[("peer", "2")]),
        0.0
    );
    b.local.set_gate(true);
}

/// take_session and announce_connect round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_session_and_announce_connect() {
    let opts = PeerOptions {
        rpc_timeout: Duration::from_millis(500),
        ..test_opts()
    };
    let a = start_node(1, opts.clone()).await;
    let b = start_node(2, opts.clone()).await;
    let c = start_node(3, opts).await;
    connect(&a, &b, 2);
    connect(&a, &c, 3);
    b.local
        .0
        .sessions
        .lock()
        .insert("c1".into(), Bytes::from_static(b"session-bytes"));

    assert_eq!(
        a.plane.take_session(2, "c1").await,
        Ok(Some(Bytes::from_static(b"session-bytes")))
    );
    assert_eq!(a.plane.take_session(2, "c1").await, Ok(None));
    // The owner learns who takes the session (it relays late deliveries there).
    assert_eq!(
        *b.local.0.taken_by.lock(),
        vec![("c1".to_string(), 1), ("c1".to_string(), 1)]
    );
    // A relayed message keeps its target client across the wire.
    let relayed = Forward {
        target: Some("c1".into()),
        ..msg(1, 77)
    };
    let ack = a.plane.forward(2, relayed).unwrap();
    assert!(matches!(ack.await, Ok(Ok(()))));
    assert!(
        b.local
            .0
            .delivered
            .lock()
            .iter()
            .any(|(from, f)| *from == 1 && f.target.as_deref() == Some("c1"))
    );
    assert_eq!(
        a.plane.take_session(7, "c1").await,
        Err(PeerError::UnknownPeer(7))
    );
    b.local.0.hang_take_session.store(true, Ordering::SeqCst);
    assert!(matches!(
        a.plane.take_session(2, "c2").await,
        Err(PeerError::Timeout(_))
    ));

    a.plane.announce_connect("dup", 1234);
    a.plane.announce_connect("dup2", 1235);
    for node in [&b, &c] {
        wait_until("announced", Duration::from_secs(10), || {
            node.local.0.announced.lock().len() == 2
        })
        .await;
        assert_eq!(
            *node.local.0.announced.lock(),
            vec![(1, "dup".to_string(), 1234), (1, "dup2".to_string(), 1235)]
        );
    }
}

/// A new channel for a set peer re-opens the stream on it: the unacknowledged batch is
/// re-sent, nothing queued is lost, and every receiver resolves Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_channel_resends_unacknowledged() {
    let a = start_node(1, test_opts()).await;
    let b = start_node(2, test_opts()).await;
    connect(&a, &b, 2);
    b.local.set_gate(false);
    let first = a.plane.forward(2, msg(2, 0)).unwrap();
    wait_until("in delivery", Duration::from_secs(10), || {
        b.local.count() == 1
    })
    .await;

    connect(&a, &b, 2); // same peer, fresh channel
    let rest: Vec<Ack> = (1..50)
        .map(|i| a.plane.forward(2, msg(1, i)).unwrap())
        .collect();
    // The re-sent batch reaches the receiver while the first delivery still runs.
    wait_until("re-sent", Duration::from_secs(10), || b.local.count() >= 2).await;
    b.local.set_gate(true);
    assert_eq!(resolved(first).await, Ok(()));
    for rx in rest {
        assert_eq!(resolved(rx).await, Ok(()));
    }
    let mut got = b.local.payloads();
    assert_eq!(
        got[..2],
        [Bytes::from("m0"), Bytes::from("m0")],
        "m0 delivered twice"
    );
    got.remove(0);
    let expected: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(got, expected);
}

/// `PeerPlane::shutdown` ends incoming Forward streams, so the node's graceful tonic
/// shutdown completes instead of waiting on the long-lived streams for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_graceful_server_stop() {
    let a = start_node(1, test_opts()).await;
    let b_local = TestNode::new();
    let b = PeerPlane::new(2, Arc::new(b_local.clone()), test_opts());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let svc = b.service();
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stop_rx.await;
            })
            .await
    });
    a.plane.set_peer(2, channel(addr));
    assert_eq!(
        resolved(a.plane.forward(2, msg(1, 0)).unwrap()).await,
        Ok(())
    );

    b.shutdown();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("graceful shutdown finished within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(b_local.count(), 1);
}
