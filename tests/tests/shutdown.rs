//! SIGTERM is a graceful shutdown (STYLE 7): 5.0 clients get DISCONNECT 0x8B
//! "Server shutting down", every connection closes, and the process exits 0
//! within 10 s.

use std::time::Duration;

use ferromq_tests::mqtt::reason;
use ferromq_tests::{TestNode, Witness};
use tokio::time::Instant;

const BASE_CONFIG: &str = "listener 0 127.0.0.1\nsys_interval 0\n";
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sigterm_disconnects_clients_and_exits_zero() {
    let mut node = TestNode::start(BASE_CONFIG).await;
    // A 5.0 publisher and a 3.1.1 subscriber that have proved they work.
    let mut witness = Witness::connect(node.mqtt_addr(), "bye").await;
    witness.round_trip("connect").await;
    let (v5, v311) = witness.clients();

    let start = Instant::now();
    node.sigterm();
    let (sent, (), status) = tokio::join!(
        v5.expect_disconnect_then_close(&[reason::SERVER_SHUTTING_DOWN], SHUTDOWN_BUDGET),
        v311.expect_closed_silently(SHUTDOWN_BUDGET),
        node.wait_exit(SHUTDOWN_BUDGET),
    );
    let elapsed = start.elapsed();
    assert_eq!(sent, reason::SERVER_SHUTTING_DOWN);
    let Some(status) = status else {
        let log = node.log();
        node.kill9();
        panic!("broker still running {SHUTDOWN_BUDGET:?} after SIGTERM; log:\n{log}");
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM ({status}); log:\n{}",
        node.log()
    );
    assert!(elapsed < SHUTDOWN_BUDGET, "shutdown took {elapsed:?}");
    assert!(
        !node.log().contains("panicked"),
        "the broker panicked while shutting down; log:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn sigterm_on_an_idle_broker_exits_zero() {
    let mut node = TestNode::start(BASE_CONFIG).await;
    let status = node.stop().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM ({status}); log:\n{}",
        node.log()
    );
}
