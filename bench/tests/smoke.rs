//! Smoke test of the load generator: a 1-second run against a real ferromq process.
//! It checks that messages arrive and the figures are printed; no timing is asserted.
//! Needs a built broker (`cargo build -p ferromq`, or set `FERROMQ_BIN`).

#![allow(clippy::unwrap_used)]

use ferromq_tests::TestNode;
use tokio::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_ferromq-bench");

async fn bench(node: &TestNode, args: &[&str]) -> String {
    let out = Command::new(BENCH)
        .args(args)
        .arg("--addr")
        .arg(node.mqtt_addr().to_string())
        .arg("--broker-pid")
        .arg(node.pid().to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ferromq-bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn one_second_runs_deliver_and_print_figures() {
    let node = TestNode::start("listener 0 127.0.0.1\nallow_anonymous true\n").await;

    for (scenario, qos) in [("qos0-1to1", 0), ("qos1-1to1", 1), ("qos2-1to1", 2)] {
        let json = bench(
            &node,
            &[scenario, "--duration", "1", "--warmup", "0.2", "--json"],
        )
        .await;
        let r: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(r["scenario"], scenario);
        assert_eq!(r["qos"], qos);
        assert!(r["delivered_per_s"].as_f64().unwrap() > 0.0, "{json}");
        assert!(r["latency_p50_us"].as_u64().is_some(), "{json}");
        assert!(r["broker_rss_peak_kib"].as_u64().unwrap() > 0, "{json}");
        // Over loopback with bounded windows nothing is dropped or repeated.
        assert_eq!(r["lost"], 0, "{json}");
        assert_eq!(r["duplicated"], 0, "{json}");
    }

    // Human-readable output, with shared subscriptions and several clients.
    let text = bench(
        &node,
        &[
            "custom",
            "--publishers",
            "4",
            "--subscribers",
            "3",
            "--layout",
            "shared",
            "--qos",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
    )
    .await;
    for line in [
        "delivered",
        "latency",
        "lost / duplicated   0 / 0",
        "broker RSS",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }

    let json = bench(&node, &["idle-connections", "200", "--json"]).await;
    let r: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(r["connections"], 200, "{json}");
    assert_eq!(r["alive"], 200, "{json}");

    let json = bench(&node, &["retained-100k", "--retained", "500", "--json"]).await;
    let r: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(r["lost"], 0, "{json}");
}
