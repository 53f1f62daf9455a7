//! A bad config is refused whole, before any socket opens (STYLE 12): the broker
//! exits with `EX_CONFIG` (78) and stderr names every problem, with its line.

use std::process::ExitStatus;
use std::time::Duration;

use ferromq_tests::node::EXIT_CONFIG;
use ferromq_tests::{Launch, StartError, TestNode};

/// What a broker that refused its config left behind.
struct Refused {
    status: ExitStatus,
    stderr: String,
    ready_file_written: bool,
}

/// Starts a broker that must exit before it is ready.
async fn refuse(launch: Launch) -> Refused {
    match TestNode::launch(launch).await {
        Ok(mut node) => {
            let log = node.log();
            node.kill9();
            panic!("broker became ready with a bad config; log:\n{log}");
        }
        Err(StartError::Exited {
            status,
            stderr,
            ready_file_written,
            ..
        }) => Refused {
            status,
            stderr,
            ready_file_written,
        },
        Err(e) => panic!("broker neither refused its config nor started: {e}"),
    }
}

/// A config that must be refused with `EX_CONFIG` and a message naming each of `names`.
async fn refuse_config(config: &str, names: &[&str]) -> Refused {
    let launch = Launch {
        timeout: Duration::from_secs(10),
        ..Launch::new(config)
    };
    let r = refuse(launch).await;
    assert_eq!(
        r.status.code(),
        Some(EXIT_CONFIG),
        "exit status for config {config:?}; stderr:\n{}",
        r.stderr
    );
    for name in names {
        assert!(
            r.stderr.contains(name),
            "stderr does not name {name:?} for config {config:?}; stderr:\n{}",
            r.stderr
        );
    }
    assert!(
        !r.ready_file_written,
        "ready file written for a bad config {config:?}"
    );
    r
}

/// Whether `text` names line `n`: `line 3`, `line: 3`, `line=3` or `file.conf:3`,
/// as a whole number (line 3 is not line 30 or 13, nor the port in `127.0.0.1:3`).
fn names_line(text: &str, n: usize) -> bool {
    let lower = text.to_lowercase();
    let number = n.to_string();
    lower.match_indices(&number).any(|(i, _)| {
        let prefix = &lower[..i];
        let digit_before = prefix
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_digit());
        let digit_after = lower[i + number.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit());
        if digit_before || digit_after {
            return false;
        }
        let after_line = prefix.trim_end_matches([' ', '=', ':']).ends_with("line");
        let after_file = prefix.strip_suffix(':').is_some_and(|p| {
            p.chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphabetic())
        });
        after_line || after_file
    })
}

#[tokio::test]
async fn unknown_directive_is_named_with_its_line_number() {
    let r = refuse_config(
        "listener 0 127.0.0.1\nsys_interval 0\nbogus_directive 1\n",
        &["bogus_directive"],
    )
    .await;
    assert!(
        names_line(&r.stderr, 3),
        "stderr does not name line 3; stderr:\n{}",
        r.stderr
    );
}

#[tokio::test]
async fn bad_values_are_named_with_key_and_value() {
    let cases: [(&str, &[&str]); 5] = [
        ("max_packet_size banana", &["max_packet_size", "banana"]),
        ("max_keepalive 70000", &["max_keepalive", "70000"]),
        (
            "max_inflight_messages lots",
            &["max_inflight_messages", "lots"],
        ),
        ("listener 99999 127.0.0.1", &["listener", "99999"]),
        // A directive without its value.
        ("max_packet_size", &["max_packet_size"]),
    ];
    for (line, names) in cases {
        let r = refuse_config(&format!("listener 0 127.0.0.1\n{line}\n"), names).await;
        assert!(
            names_line(&r.stderr, 2),
            "stderr does not name line 2 for {line:?}; stderr:\n{}",
            r.stderr
        );
    }
}

#[tokio::test]
async fn every_error_is_reported_at_once() {
    let r = refuse_config(
        "listener 0 127.0.0.1\nbogus_one 1\nmax_packet_size banana\nbogus_two 2\n",
        &["bogus_one", "max_packet_size", "banana", "bogus_two"],
    )
    .await;
    for line in [2, 3, 4] {
        assert!(
            names_line(&r.stderr, line),
            "stderr does not name line {line}; stderr:\n{}",
            r.stderr
        );
    }
}

#[tokio::test]
async fn missing_config_file_is_named() {
    let r = refuse(Launch {
        config: None,
        ..Launch::new("")
    })
    .await;
    assert!(
        !r.status.success(),
        "a missing config file must fail; stderr:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("missing.conf"),
        "stderr does not name the config path; stderr:\n{}",
        r.stderr
    );
}

/// With an ephemeral listener and an error, the broker exits without ever
/// writing its ready file (which it writes once bound).
#[tokio::test]
async fn config_error_writes_no_ready_file() {
    refuse_config(
        "listener 0 127.0.0.1\nmax_packet_size banana\n",
        &["max_packet_size"],
    )
    .await;
}

/// The listener's port is held by the test: a broker that bound before
/// validating would fail with "address in use"; one that validates the whole
/// config first reports the config error and never tries the port.
#[tokio::test]
async fn config_is_validated_before_any_port_is_bound() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let port = held.local_addr().expect("local addr").port();
    let r = refuse_config(
        &format!("listener {port} 127.0.0.1\nbogus_directive 1\n"),
        &["bogus_directive"],
    )
    .await;
    assert!(
        !r.stderr.to_lowercase().contains("in use"),
        "the broker tried to bind before validating the config; stderr:\n{}",
        r.stderr
    );
    drop(held);
}

#[test]
fn names_line_needs_the_exact_number() {
    assert!(names_line("ferromq.conf line 3: unknown directive", 3));
    assert!(names_line("ferromq.conf:3: unknown directive", 3));
    assert!(names_line("error at line: 3", 3));
    assert!(names_line("(line=3)", 3));
    assert!(!names_line("ferromq.conf line 30: unknown directive", 3));
    assert!(!names_line("listener 127.0.0.1:3", 2));
    assert!(!names_line("listener 3", 3));
}
