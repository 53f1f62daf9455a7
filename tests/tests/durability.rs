//! Durability across restarts and crashes (issue 3): what clients see of a broker that
//! is stopped with SIGTERM or killed with SIGKILL and started again on the same data
//! directory.
//!
//! The contract under test:
//! - persistence is on by default, in `--data-dir DIR`; mosquitto.conf `persistence
//!   false` keeps everything in memory; `persistence_location` sets the directory;
//! - `durability = "strict"` (the default): a QoS 1/2 PUBLISH routed to a persistent
//!   session or to the retained store is acknowledged (PUBACK / PUBREC) only after the
//!   store was flushed (group commit), so nothing acknowledged is lost on `kill -9`;
//!   `periodic` (env `FERROMQ_PERSISTENCE_DURABILITY=periodic`) flushes every
//!   `flush_interval`;
//! - on restart the broker loads persistent sessions (3.1.1 clean session 0, 5.0 Session
//!   Expiry Interval > 0) with their subscriptions, queued QoS 1/2 messages, outbound
//!   in-flight messages (PUBLISH resent with DUP, PUBREL resent for PUBREC'd ones),
//!   inbound QoS 2 packet ids awaiting PUBREL (a resent PUBLISH is not routed twice),
//!   pending delayed wills (due at their wall-clock deadline, or at once if it passed
//!   while the broker was down), and retained messages; session and message expiry are
//!   measured across the downtime;
//! - a data directory of a newer format (`DATA_DIR/FORMAT` = `ferromq-store 999`) or a
//!   corrupt store stops the broker with exit code 74, a message naming the path and
//!   the problem, and no file changed.
//!
//! Tests: scenarios (a) to (e) of the issue, each after SIGTERM and after `kill -9`
//! (`*_after_sigterm`, `*_after_kill`); persistence off, `persistence_location`,
//! periodic durability; the format-version and corruption refusals; and
//! [`crash_loop_loses_nothing_acknowledged`], which kills the broker at random moments
//! under load and checks every acknowledged message against what a persistent
//! subscriber received.
//!
//! The harness's `TestNode` gives every start a fresh directory, so this file has its
//! own restartable [`Broker`]: one temp dir, one data dir, one config, any number of runs
//! (each with its own ready file and stderr log). It removes every `FERROMQ_*` variable
//! from the broker's environment (the test knobs below would otherwise be refused as
//! unknown config) and sets only the ones a test asks for.
//!
//! Durability points. In strict mode an acknowledgement means "flushed", so a test kills
//! right after the acks it needs. A state change that no acknowledgement covers (a
//! client going offline, a delayed will becoming pending) is made durable before a
//! `kill -9` with [`durable_barrier`]: a retained QoS 1 PUBLISH whose PUBACK means the
//! store, with everything written before it, is on disk. The outbound PUBREC -> PUBREL
//! step gets no barrier: a sender must not resend the PUBLISH once it has sent the
//! PUBREL [MQTT-4.3.3-6], so the broker must make that step durable before it sends
//! the PUBREL.
//!
//! Knobs (environment of the test process):
//! - `FERROMQ_CRASH_CYCLES` or `FERROMQ_TEST_CRASH_CYCLES`: kill cycles of the crash
//!   loop (default 20). Prefer the second when running the whole suite: the broker
//!   refuses unknown `FERROMQ_*` variables except `FERROMQ_TEST_*`, and `TestNode`
//!   passes the test process's environment on;
//! - `FERROMQ_TEST_CRASH_SEED`: the crash loop's RNG seed (printed on every run);
//! - `FERROMQ_TEST_DURABILITY_DRY_RUN=1`: never stop the broker; "restarts" only drop
//!   and reconnect the clients. Checks the tests' own client logic against a broker
//!   that keeps its state in memory; the tests that need a real restart are skipped.
//!
//! With `FERROMQ_TESTS_AGAINST=mosquitto` every test here is skipped: they are about
//! ferromq's store.

#![allow(clippy::unwrap_used)]

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use ferromq_tests::mqtt::{
    self, Ack, Props, Publish, Suback, connect_flags, frame, kind, prop, publish_body,
    publish_first_byte, put_bytes,
};
use ferromq_tests::node::{ferromq_bin, reference_broker};
use ferromq_tests::{Incoming, RawClient, wait_until};
use tokio::sync::watch;
use tokio::time::Instant;

const BASE_CONFIG: &str = "listener 0 127.0.0.1\nsys_interval 0\n";
/// The exit code for a store the broker must not open (sysexits.h `EX_IOERR`).
const EXIT_STORE: i32 = 74;
/// How long a start (store load included) may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an answer the broker should give at once may take (2 shared cores).
const REPLY: Duration = Duration::from_secs(10);
/// How long to listen to prove that nothing (more) is delivered.
const QUIET: Duration = Duration::from_millis(700);
/// Session Expiry Interval of the 5.0 persistent sessions.
const LONG_EXPIRY: u32 = 3600;

/// How the broker goes down between two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: a graceful shutdown, which must exit 0.
    Term,
    /// SIGKILL: nothing the broker did not flush survives.
    Kill,
}

fn dry_run() -> bool {
    std::env::var("FERROMQ_TEST_DURABILITY_DRY_RUN").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether to skip a test: against Mosquitto always; in a dry run if it needs a real
/// restart.
fn skip(name: &str, needs_real_restart: bool) -> bool {
    if reference_broker() {
        eprintln!("{name}: skipped (FERROMQ_TESTS_AGAINST=mosquitto; ferromq's store only)");
        return true;
    }
    if needs_real_restart && dry_run() {
        eprintln!("{name}: skipped in a dry run (needs a real restart)");
        return true;
    }
    false
}

// ---------------------------------------------------------------------------
// A broker that can be restarted on the same data directory

/// A broker that exited before it was ready.
#[derive(Debug)]
struct Refused {
    status: ExitStatus,
    stderr: String,
    ready_file_written: bool,
}

/// One broker identity across runs: config, data dir and logs in one temp dir.
/// Dropping it kills a running process and removes the dir.
struct Broker {
    child: Option<Child>,
    addr: Option<SocketAddr>,
    run: u32,
    config_path: PathBuf,
    data_dir: PathBuf,
    /// Pass `--data-dir`; `false` when the config's `persistence_location` says where.
    data_dir_arg: bool,
    env: Vec<(String, String)>,
    dry_run: bool,
    // Last, so the process is gone before its files are removed.
    dir: tempfile::TempDir,
}

impl Broker {
    /// A broker with a mosquitto.conf-style config; `{dir}` in it is replaced by the
    /// broker's temp dir.
    fn new(config: &str) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("ferromq-durability-")
            .tempdir()
            .expect("creating a temp dir");
        let config = config.replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join("ferromq.conf");
        fs::write(&config_path, config).expect("writing the config");
        Broker {
            child: None,
            addr: None,
            run: 0,
            config_path,
            data_dir: dir.path().join("data"),
            data_dir_arg: true,
            env: Vec::new(),
            dry_run: dry_run(),
            dir,
        }
    }

    /// Sets a variable in the broker's environment.
    fn env(mut self, key: &str, value: &str) -> Broker {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// No `--data-dir`: the data dir is `dir/<relative>` as the config says.
    fn data_dir_from_config(mut self, relative: &str) -> Broker {
        self.data_dir_arg = false;
        self.data_dir = self.dir.path().join(relative);
        self
    }

    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn ready_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("ready-{run}.json"))
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("stderr-{run}.log"))
    }

    /// The current (or last) run's stderr.
    fn log(&self) -> String {
        fs::read(self.log_path(self.run))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The end of the last two runs' logs, for failure messages.
    fn log_tail(&self) -> String {
        let mut out = String::new();
        for run in self.run.saturating_sub(1).max(1)..=self.run {
            let text = fs::read(self.log_path(run))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(80);
            out.push_str(&format!(
                "--- run {run} stderr ({} lines, last {}) ---\n",
                lines.len(),
                lines.len() - skip
            ));
            for l in &lines[skip..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Starts a run; panics with the log if the broker does not become ready.
    async fn start(&mut self) -> SocketAddr {
        if self.dry_run
            && let Some(addr) = self.addr
        {
            return addr;
        }
        match self.try_start().await {
            Ok(addr) => addr,
            Err(r) => panic!(
                "broker (run {}) exited with {} before it was ready; stderr:\n{}",
                self.run, r.status, r.stderr
            ),
        }
    }

    /// Starts a run and waits for its ready file, or for it to exit.
    async fn try_start(&mut self) -> Result<SocketAddr, Refused> {
        assert!(self.child.is_none(), "the broker is already running");
        self.run += 1;
        let ready = self.ready_path(self.run);
        let log = File::create(self.log_path(self.run)).expect("creating the stderr log");
        let log_out = log.try_clone().expect("cloning the log handle");
        let mut cmd = Command::new(ferromq_bin());
        cmd.arg("-c")
            .arg(&self.config_path)
            .arg("--ready-file")
            .arg(&ready)
            // Many brokers run at once: the operators' HTTP port must not collide.
            .arg("--http-listen")
            .arg("127.0.0.1:0");
        if self.data_dir_arg {
            cmd.arg("--data-dir").arg(&self.data_dir);
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FERROMQ_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_out))
            .stderr(Stdio::from(log));
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it with `cargo build -p ferromq`, or set FERROMQ_BIN)",
                ferromq_bin().display()
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit() {
                return Err(Refused {
                    status,
                    stderr: self.log(),
                    ready_file_written: ready.exists(),
                });
            }
            if let Ok(text) = fs::read_to_string(&ready)
                && let Some(addr) = mqtt_addr_from_ready_file(&text)
            {
                self.addr = Some(addr);
                return Ok(addr);
            }
            if Instant::now() >= deadline {
                let log = self.log();
                self.kill9();
                panic!(
                    "broker (run {}) not ready after {START_TIMEOUT:?}; stderr:\n{log}",
                    self.run
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The exit status if the process has exited (reaps it).
    fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.addr = None;
        Some(status)
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.addr = None;
    }

    /// SIGTERM; waits for the exit and asserts it is 0.
    async fn terminate(&mut self) {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return;
        };
        // kill(1) keeps this crate free of `unsafe`.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit() {
                assert_eq!(
                    status.code(),
                    Some(0),
                    "exit status after SIGTERM ({status}); stderr:\n{}",
                    self.log()
                );
                return;
            }
            if Instant::now() >= deadline {
                let log = self.log();
                self.kill9();
                panic!("broker still running {STOP_TIMEOUT:?} after SIGTERM; stderr:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Takes the broker down (nothing in a dry run).
    async fn stop(&mut self, how: Stop) {
        if self.dry_run {
            return;
        }
        match how {
            Stop::Term => self.terminate().await,
            Stop::Kill => self.kill9(),
        }
    }

    /// Takes the broker down and starts it again on the same data dir.
    async fn restart(&mut self, how: Stop) -> SocketAddr {
        self.stop(how).await;
        self.start().await
    }

    /// Ends a test: on error, panics with it and the end of the broker's logs; on
    /// success stops a running broker gracefully (which must exit 0).
    async fn finish(mut self, result: anyhow::Result<()>) {
        if let Err(e) = result {
            let logs = self.log_tail();
            self.kill9();
            panic!("{e:#}\n{logs}");
        }
        self.terminate().await;
    }

    /// Waits until the current run's stderr has a line satisfying `pred`.
    async fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let found = wait_until(REPLY, || self.log().lines().any(&pred)).await;
        ensure!(found, "no log line {what} after {REPLY:?}");
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The first `mqtt` listener of a ready file `{"pid":..,"listeners":[{"name","protocol","addr"}]}`.
fn mqtt_addr_from_ready_file(text: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("listeners")?
        .as_array()?
        .iter()
        .find(|l| l.get("protocol").and_then(|p| p.as_str()) == Some("mqtt"))?
        .get("addr")?
        .as_str()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Packets and client steps (hand-encoded, like the rest of the harness)

/// A Will in a CONNECT.
struct Will<'a> {
    topic: &'a str,
    payload: &'a [u8],
    qos: u8,
    /// 5.0 Will Properties (Will Delay Interval, ...).
    props: Props,
}

/// A CONNECT with every field this file needs (3.1.1 when `v5` is false).
fn connect_packet(v5: bool, id: &str, clean: bool, props: &Props, will: Option<&Will>) -> Vec<u8> {
    let mut flags = 0;
    if clean {
        flags |= connect_flags::CLEAN_START;
    }
    if let Some(w) = will {
        flags |= connect_flags::WILL | (w.qos << 3);
    }
    let mut body = Vec::new();
    put_bytes(&mut body, b"MQTT");
    body.push(if v5 { 5 } else { 4 });
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    if v5 {
        props.put(&mut body);
    }
    put_bytes(&mut body, id.as_bytes());
    if let Some(w) = will {
        if v5 {
            w.props.put(&mut body);
        }
        put_bytes(&mut body, w.topic.as_bytes());
        put_bytes(&mut body, w.payload);
    }
    frame(0x10, &body)
}

/// A PUBLISH in either version (`props` only written for 5.0).
#[allow(clippy::too_many_arguments)]
fn publish(
    v5: bool,
    topic: &str,
    qos: u8,
    packet_id: u16,
    retain: bool,
    dup: bool,
    props: &Props,
    payload: &[u8],
) -> Vec<u8> {
    frame(
        publish_first_byte(qos, retain, dup),
        &publish_body(
            topic.as_bytes(),
            (qos > 0).then_some(packet_id),
            v5.then_some(props),
            payload,
        ),
    )
}

fn pubrec(packet_id: u16) -> Vec<u8> {
    frame(0x50, &packet_id.to_be_bytes())
}

fn pubrel(packet_id: u16) -> Vec<u8> {
    frame(0x62, &packet_id.to_be_bytes())
}

fn pubcomp(packet_id: u16) -> Vec<u8> {
    frame(0x70, &packet_id.to_be_bytes())
}

fn expiry(seconds: u32) -> Props {
    Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, seconds)
}

/// Connects and returns the client and the CONNACK's Session Present flag.
async fn open(
    addr: SocketAddr,
    v5: bool,
    id: &str,
    clean: bool,
    props: &Props,
    will: Option<&Will<'_>>,
) -> anyhow::Result<(RawClient, bool)> {
    let mut c = RawClient::tcp(addr)
        .await
        .with_context(|| format!("{id}: TCP connect to {addr}"))?;
    c.set_v5(v5);
    c.send(&connect_packet(v5, id, clean, props, will))
        .await
        .with_context(|| format!("{id}: sending CONNECT"))?;
    let connack = c
        .expect_connack(REPLY)
        .await
        .with_context(|| format!("{id}: CONNACK"))?;
    ensure!(
        connack.code == 0,
        "{id}: CONNACK code {:#04x}",
        connack.code
    );
    Ok((c, connack.session_present))
}

/// A persistent session: 3.1.1 clean session 0, or 5.0 with a long Session Expiry
/// Interval (`first`: Clean Start, so a new session is created).
async fn open_persistent(
    addr: SocketAddr,
    v5: bool,
    id: &str,
    first: bool,
) -> anyhow::Result<(RawClient, bool)> {
    if v5 {
        open(addr, true, id, first, &expiry(LONG_EXPIRY), None).await
    } else {
        open(addr, false, id, false, &Props::new(), None).await
    }
}

/// A clean 5.0 client (publisher, barrier, retained reader).
async fn open_clean(addr: SocketAddr, id: &str) -> anyhow::Result<RawClient> {
    Ok(open(addr, true, id, true, &Props::new(), None).await?.0)
}

async fn next_packet(
    c: &mut RawClient,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<mqtt::RawPacket> {
    match c.read_packet(timeout).await {
        Incoming::Packet(p) => Ok(p),
        other => bail!("{c:?}: waiting for {what}: got {other:?}"),
    }
}

/// Reads an acknowledgement of `want` kind for `packet_id` with a success reason.
async fn expect_ack(c: &mut RawClient, want: u8, packet_id: u16) -> anyhow::Result<Ack> {
    let what = format!("{} {packet_id}", kind::name(want));
    let p = next_packet(c, REPLY, &what).await?;
    let ack = Ack::parse(&p, c.is_v5()).with_context(|| format!("expected {what}, got {p}"))?;
    ensure!(
        ack.kind == want && ack.packet_id == packet_id,
        "expected {what}, got {p}"
    );
    ensure!(
        ack.reason < 0x80,
        "{what} has error reason {:#04x} ({:?})",
        ack.reason,
        ack.props.get_string(prop::REASON_STRING)
    );
    Ok(ack)
}

/// Publishes and completes the QoS flow (PUBACK; PUBREC, PUBREL, PUBCOMP).
async fn publish_acked(
    c: &mut RawClient,
    topic: &str,
    qos: u8,
    packet_id: u16,
    retain: bool,
    props: &Props,
    payload: &[u8],
) -> anyhow::Result<()> {
    let v5 = c.is_v5();
    c.send(&publish(
        v5, topic, qos, packet_id, retain, false, props, payload,
    ))
    .await?;
    match qos {
        1 => {
            expect_ack(c, kind::PUBACK, packet_id).await?;
        }
        2 => {
            expect_ack(c, kind::PUBREC, packet_id).await?;
            c.send(&pubrel(packet_id)).await?;
            expect_ack(c, kind::PUBCOMP, packet_id).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Subscribes and checks that each filter got the QoS it asked for.
async fn subscribe(
    c: &mut RawClient,
    packet_id: u16,
    filters: &[(&str, u8)],
) -> anyhow::Result<()> {
    let packet = if c.is_v5() {
        mqtt::subscribe_v5(packet_id, &Props::new(), filters)
    } else {
        mqtt::subscribe_v311(packet_id, filters)
    };
    c.send(&packet).await?;
    let p = next_packet(c, REPLY, "SUBACK").await?;
    let suback = Suback::parse(&p, c.is_v5()).with_context(|| format!("SUBACK: {p}"))?;
    let want: Vec<u8> = filters.iter().map(|(_, q)| *q).collect();
    ensure!(
        suback.packet_id == packet_id && suback.codes == want,
        "SUBACK {suback:?}, expected packet id {packet_id} and codes {want:?}"
    );
    Ok(())
}

/// Sends DISCONNECT (Normal disconnection: the session stays) and waits for the close.
async fn disconnect(mut c: RawClient) -> anyhow::Result<()> {
    c.send(&mqtt::disconnect_v311()).await?;
    let deadline = Instant::now() + REPLY;
    loop {
        match c
            .read_packet(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Incoming::Packet(_) => {}
            Incoming::Closed(_) | Incoming::Garbage(_) => return Ok(()),
            Incoming::TimedOut => bail!("{c:?}: connection still open {REPLY:?} after DISCONNECT"),
        }
    }
}

/// A retained QoS 1 PUBLISH: its PUBACK (strict durability) means everything the store
/// was given before it is on disk.
async fn durable_barrier(addr: SocketAddr) -> anyhow::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut c = open_clean(addr, &format!("barrier-{n}")).await?;
    publish_acked(
        &mut c,
        "durability/barrier",
        1,
        1,
        true,
        &Props::new(),
        b"barrier",
    )
    .await
    .context("durability barrier")?;
    disconnect(c).await
}

/// A delivered application message.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    dup: bool,
    retain: bool,
    packet_id: Option<u16>,
    message_expiry: Option<u32>,
    content_type: Option<String>,
}

impl Msg {
    fn parse(p: &mqtt::RawPacket, v5: bool) -> anyhow::Result<Msg> {
        let m = Publish::parse(p, v5).with_context(|| format!("expected PUBLISH, got {p}"))?;
        Ok(Msg {
            message_expiry: m.props.get_u32(prop::MESSAGE_EXPIRY_INTERVAL),
            content_type: m.props.get_string(prop::CONTENT_TYPE).map(str::to_owned),
            topic: m.topic,
            payload: m.payload.to_vec(),
            qos: m.qos,
            dup: m.dup,
            retain: m.retain,
            packet_id: m.packet_id,
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Reads the next PUBLISH and acknowledges it as a client does: PUBACK for QoS 1,
/// PUBREC for QoS 2; a PUBREL arriving meanwhile gets its PUBCOMP. `None` if no PUBLISH
/// came within `timeout`.
async fn recv_opt(c: &mut RawClient, timeout: Duration) -> anyhow::Result<Option<Msg>> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = match c
            .read_packet(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Incoming::Packet(p) => p,
            Incoming::TimedOut => return Ok(None),
            other => bail!("{c:?}: waiting for a PUBLISH: got {other:?}"),
        };
        match p.kind() {
            kind::PUBLISH => {
                let m = Msg::parse(&p, c.is_v5())?;
                match (m.qos, m.packet_id) {
                    (1, Some(id)) => c.send(&mqtt::puback(id)).await?,
                    (2, Some(id)) => c.send(&pubrec(id)).await?,
                    _ => {}
                }
                return Ok(Some(m));
            }
            kind::PUBREL => {
                let ack = Ack::parse(&p, c.is_v5())?;
                c.send(&pubcomp(ack.packet_id)).await?;
            }
            _ => bail!("expected PUBLISH or PUBREL, got {p}"),
        }
    }
}

/// [`recv_opt`], with no PUBLISH within `timeout` an error.
async fn recv(c: &mut RawClient, timeout: Duration) -> anyhow::Result<Msg> {
    recv_opt(c, timeout)
        .await?
        .with_context(|| format!("{c:?}: no PUBLISH within {timeout:?}"))
}

async fn recv_n(c: &mut RawClient, n: usize, what: &str) -> anyhow::Result<Vec<Msg>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = recv(c, REPLY).await.with_context(|| {
            format!(
                "{what}: message {} of {n}; received before: {:?}",
                out.len() + 1,
                texts(&out)
            )
        })?;
        out.push(m);
    }
    Ok(out)
}

/// Listens for [`QUIET`]: PUBRELs are answered, any PUBLISH is an error.
async fn expect_no_publish(c: &mut RawClient, context: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + QUIET;
    loop {
        match c
            .read_packet(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Incoming::TimedOut => return Ok(()),
            Incoming::Packet(p) if p.kind() == kind::PUBREL => {
                let ack = Ack::parse(&p, c.is_v5())?;
                c.send(&pubcomp(ack.packet_id)).await?;
            }
            Incoming::Packet(p) if p.kind() == kind::PUBLISH => {
                let m = Msg::parse(&p, c.is_v5())?;
                bail!("{context}: unexpected delivery {m:?} ({:?})", m.text());
            }
            other => bail!("{context}: unexpected {other:?}"),
        }
    }
}

/// Receives (and acknowledges) PUBLISHes until none comes for [`QUIET`].
async fn collect_until_quiet(c: &mut RawClient) -> anyhow::Result<Vec<Msg>> {
    let mut out = Vec::new();
    while let Some(m) = recv_opt(c, QUIET).await? {
        out.push(m);
    }
    Ok(out)
}

fn texts(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().map(Msg::text).collect()
}

// ---------------------------------------------------------------------------
// (a) persistent sessions with queued QoS 1 and QoS 2 messages

async fn queued_messages_survive(b: &mut Broker, how: Stop) -> anyhow::Result<()> {
    let addr = b.start().await;
    let subscribers = [("a-sub-v311", false), ("a-sub-v5", true)];
    for (id, v5) in subscribers {
        let (mut c, present) = open_persistent(addr, v5, id, true).await?;
        ensure!(!present, "{id}: session present on a fresh data dir");
        subscribe(&mut c, 1, &[("dur/a/#", 2)]).await?;
        disconnect(c).await?;
    }
    let expected: Vec<(String, u8)> = (0..10)
        .map(|i| (format!("a-{i}"), if i % 2 == 0 { 1 } else { 2 }))
        .collect();
    let mut p = open_clean(addr, "a-pub").await?;
    for (i, (payload, qos)) in expected.iter().enumerate() {
        let id = u16::try_from(i + 1)?;
        publish_acked(
            &mut p,
            "dur/a/x",
            *qos,
            id,
            false,
            &Props::new(),
            payload.as_bytes(),
        )
        .await
        .with_context(|| format!("publishing {payload}"))?;
    }
    // Acknowledged, hence on disk: no barrier before the kill.
    let addr = b.restart(how).await;
    drop(p);

    for (id, v5) in subscribers {
        let (mut c, present) = open_persistent(addr, v5, id, false).await?;
        ensure!(
            present,
            "{id}: CONNACK session present = 0 after a restart ({how:?}) [MQTT-3.2.2-2]"
        );
        let msgs = recv_n(&mut c, expected.len(), &format!("{id} after {how:?}")).await?;
        let got: Vec<(String, u8)> = msgs.iter().map(|m| (m.text(), m.qos)).collect();
        ensure!(
            got == expected,
            "{id} after {how:?}: got (payload, QoS) {got:?}, expected {expected:?} in this order"
        );
        expect_no_publish(&mut c, &format!("{id} after the queued messages")).await?;
        disconnect(c).await?;
    }

    if how == Stop::Term {
        // Everything was acknowledged and the shutdown was clean: nothing comes back.
        let addr = b.restart(Stop::Term).await;
        for (id, v5) in subscribers {
            let (mut c, present) = open_persistent(addr, v5, id, false).await?;
            ensure!(present, "{id}: session present = 0 after a second restart");
            expect_no_publish(
                &mut c,
                &format!("{id}: acknowledged messages delivered again after a clean restart"),
            )
            .await?;
            disconnect(c).await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn queued_messages_survive_sigterm() {
    if skip("queued_messages_survive_sigterm", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = queued_messages_survive(&mut b, Stop::Term).await;
    b.finish(r).await;
}

#[tokio::test]
async fn queued_messages_survive_kill() {
    if skip("queued_messages_survive_kill", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = queued_messages_survive(&mut b, Stop::Kill).await;
    b.finish(r).await;
}

// ---------------------------------------------------------------------------
// (b) in-flight QoS 2, both directions

/// The broker as sender: one QoS 2 message PUBREC'd (the broker answered PUBREL), one
/// QoS 2 and one QoS 1 sent but not acknowledged, while the subscriber is connected.
/// After the restart: PUBREL for the first, PUBLISH with DUP and the same packet id for
/// the others, nothing else.
async fn outbound_inflight_survives(b: &mut Broker, how: Stop) -> anyhow::Result<()> {
    let addr = b.start().await;
    let (mut sub, _) = open_persistent(addr, false, "b-sub", true).await?;
    subscribe(&mut sub, 1, &[("dur/b", 2)]).await?;
    let mut p = open_clean(addr, "b-pub").await?;
    let np = Props::new();

    let mut sent = Vec::new();
    for (i, (payload, qos)) in [("m1", 2), ("m2", 2), ("m3", 1)].into_iter().enumerate() {
        publish_acked(
            &mut p,
            "dur/b",
            qos,
            u16::try_from(i + 1)?,
            false,
            &np,
            payload.as_bytes(),
        )
        .await?;
        let m = Msg::parse(&next_packet(&mut sub, REPLY, payload).await?, false)?;
        ensure!(
            m.text() == payload && m.qos == qos,
            "expected {payload} at QoS {qos}, got {m:?}"
        );
        sent.push(
            m.packet_id
                .with_context(|| format!("{payload} without packet id"))?,
        );
    }
    let [p1, p2, p3] = sent[..] else {
        bail!("three packet ids expected: {sent:?}");
    };
    if how == Stop::Kill {
        // Which packet id each delivery went out with is recorded without an ack
        // waiting for it (the crash loop covers that window); make it durable.
        durable_barrier(addr).await?;
    }
    // The PUBREC -> PUBREL step of m1 gets no barrier: the broker must have made it
    // durable before it sends the PUBREL [MQTT-4.3.3-6].
    sub.send(&pubrec(p1)).await?;
    expect_ack(&mut sub, kind::PUBREL, p1).await?;

    // The subscriber is still connected when the broker goes down.
    let addr = b.restart(how).await;
    drop(sub);
    drop(p);

    let (mut sub, present) = open_persistent(addr, false, "b-sub", false).await?;
    ensure!(
        present,
        "b-sub: session present = 0 after a restart ({how:?})"
    );
    // [MQTT-4.4.0-1]: unacknowledged PUBLISH and PUBREL packets are resent with their
    // original packet ids; PUBLISH with DUP [MQTT-3.3.1-1], in the original order
    // [MQTT-4.6.0-1]; never the PUBLISH of m1, whose PUBREL was sent [MQTT-4.3.3-6].
    let mut pubrel_seen = false;
    let mut resent = Vec::new();
    while !(pubrel_seen && resent.len() == 2) {
        let p = next_packet(
            &mut sub,
            REPLY,
            &format!(
                "PUBREL {p1} and the PUBLISHes of m2 and m3 after {how:?} (so far: PUBREL {pubrel_seen}, {:?})",
                texts(&resent)
            ),
        )
        .await?;
        match p.kind() {
            kind::PUBREL => {
                let ack = Ack::parse(&p, false)?;
                ensure!(
                    ack.packet_id == p1 && !pubrel_seen,
                    "unexpected PUBREL {} (m1 had {p1})",
                    ack.packet_id
                );
                pubrel_seen = true;
            }
            kind::PUBLISH => {
                let m = Msg::parse(&p, false)?;
                ensure!(
                    m.text() != "m1",
                    "after {how:?} the broker resent the PUBLISH of m1 although the subscriber had \
                     sent PUBREC and the broker its PUBREL [MQTT-4.3.3-6]: {m:?}"
                );
                resent.push(m);
            }
            _ => bail!("unexpected {p} after the restart"),
        }
    }
    let (r2, r3) = (&resent[0], &resent[1]);
    ensure!(
        r2.text() == "m2" && r2.qos == 2 && r2.packet_id == Some(p2) && r2.dup,
        "expected m2 resent first, QoS 2, packet id {p2}, DUP: got {r2:?}"
    );
    ensure!(
        r3.text() == "m3" && r3.qos == 1 && r3.packet_id == Some(p3) && r3.dup,
        "expected m3 resent second, QoS 1, packet id {p3}, DUP: got {r3:?}"
    );
    sub.send(&pubcomp(p1)).await?;
    sub.send(&pubrec(p2)).await?;
    expect_ack(&mut sub, kind::PUBREL, p2).await?;
    sub.send(&pubcomp(p2)).await?;
    sub.send(&mqtt::puback(p3)).await?;

    // Nothing else was pending: the next delivery is a fresh message.
    let mut p = open_clean(addr, "b-pub").await?;
    publish_acked(&mut p, "dur/b", 1, 1, false, &np, b"sentinel").await?;
    let next = recv(&mut sub, REPLY).await?;
    ensure!(
        next.text() == "sentinel",
        "expected only the sentinel after the resent packets, got {next:?}"
    );
    disconnect(sub).await?;
    disconnect(p).await
}

/// The broker as receiver: QoS 2 PUBLISHes PUBREC'd by the broker; one publisher resends
/// the PUBLISH (DUP) after the restart, the other had sent PUBREL and resends it.
async fn inbound_inflight_survives(b: &mut Broker, how: Stop) -> anyhow::Result<()> {
    let addr = b.start().await;
    let (mut sub, _) = open_persistent(addr, true, "bi-sub", true).await?;
    subscribe(&mut sub, 1, &[("dur/bi", 2)]).await?;
    disconnect(sub).await?;
    let np = Props::new();

    let (mut p311, _) = open_persistent(addr, false, "bi-pub-v311", true).await?;
    p311.send(&publish(false, "dur/bi", 2, 7, false, false, &np, b"x311"))
        .await?;
    expect_ack(&mut p311, kind::PUBREC, 7).await?;

    let (mut p5, _) = open_persistent(addr, true, "bi-pub-v5", true).await?;
    p5.send(&publish(true, "dur/bi", 2, 9, false, false, &np, b"x5"))
        .await?;
    expect_ack(&mut p5, kind::PUBREC, 9).await?;
    // PUBREL sent, PUBCOMP not awaited: the broker may go down before or after it.
    p5.send(&pubrel(9)).await?;

    let addr = b.restart(how).await;
    drop(p311);
    drop(p5);

    let (mut p311, present) = open_persistent(addr, false, "bi-pub-v311", false).await?;
    ensure!(present, "bi-pub-v311: session present = 0 after {how:?}");
    // The client never saw PUBREL go out: it resends the PUBLISH with DUP [MQTT-4.4.0-1].
    p311.send(&publish(false, "dur/bi", 2, 7, false, true, &np, b"x311"))
        .await?;
    expect_ack(&mut p311, kind::PUBREC, 7).await?;
    p311.send(&pubrel(7)).await?;
    expect_ack(&mut p311, kind::PUBCOMP, 7).await?;

    let (mut p5, present) = open_persistent(addr, true, "bi-pub-v5", false).await?;
    ensure!(present, "bi-pub-v5: session present = 0 after {how:?}");
    p5.send(&pubrel(9)).await?;
    let p = next_packet(&mut p5, REPLY, "PUBCOMP 9").await?;
    let ack = Ack::parse(&p, true)?;
    // 0x92 Packet Identifier not found if the first PUBREL was processed before the stop.
    ensure!(
        ack.kind == kind::PUBCOMP && ack.packet_id == 9 && matches!(ack.reason, 0x00 | 0x92),
        "expected PUBCOMP 9 (reason 0x00 or 0x92), got {ack:?}"
    );
    // A later message from the same publisher: a duplicate would be queued before it.
    publish_acked(&mut p311, "dur/bi", 1, 8, false, &np, b"end").await?;

    let (mut sub, present) = open_persistent(addr, true, "bi-sub", false).await?;
    ensure!(present, "bi-sub: session present = 0 after {how:?}");
    let mut got = Vec::new();
    while got.last().map(Msg::text).as_deref() != Some("end") {
        let m = recv(&mut sub, REPLY)
            .await
            .with_context(|| format!("bi-sub after {how:?}, received so far {:?}", texts(&got)))?;
        got.push(m);
    }
    ensure!(
        texts(&got) == ["x311", "x5", "end"],
        "each QoS 2 message exactly once, then the sentinel: got {:?} [MQTT-4.3.3-9]",
        texts(&got)
    );
    disconnect(sub).await?;
    disconnect(p311).await?;
    disconnect(p5).await
}

#[tokio::test]
async fn outbound_qos2_inflight_survives_sigterm() {
    if skip("outbound_qos2_inflight_survives_sigterm", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = outbound_inflight_survives(&mut b, Stop::Term).await;
    b.finish(r).await;
}

#[tokio::test]
async fn outbound_qos2_inflight_survives_kill() {
    if skip("outbound_qos2_inflight_survives_kill", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = outbound_inflight_survives(&mut b, Stop::Kill).await;
    b.finish(r).await;
}

#[tokio::test]
async fn inbound_qos2_inflight_survives_sigterm() {
    if skip("inbound_qos2_inflight_survives_sigterm", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = inbound_inflight_survives(&mut b, Stop::Term).await;
    b.finish(r).await;
}

#[tokio::test]
async fn inbound_qos2_inflight_survives_kill() {
    if skip("inbound_qos2_inflight_survives_kill", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = inbound_inflight_survives(&mut b, Stop::Kill).await;
    b.finish(r).await;
}

// ---------------------------------------------------------------------------
// (c) retained messages set and cleared

async fn retained_survive(b: &mut Broker, how: Stop) -> anyhow::Result<()> {
    let addr = b.start().await;
    let mut p = open_clean(addr, "c-pub").await?;
    let np = Props::new();
    let typed = Props::new()
        .string(prop::CONTENT_TYPE, "text/plain")
        .byte(prop::PAYLOAD_FORMAT_INDICATOR, 1);
    publish_acked(&mut p, "r/a", 1, 1, true, &np, b"A1").await?;
    publish_acked(&mut p, "r/a", 2, 2, true, &np, b"A2").await?;
    publish_acked(&mut p, "r/b", 1, 3, true, &np, b"B").await?;
    // An empty retained payload clears the topic [MQTT-3.3.1-10].
    publish_acked(&mut p, "r/b", 1, 4, true, &np, b"").await?;
    publish_acked(&mut p, "r/c", 1, 5, true, &typed, b"C").await?;
    publish_acked(&mut p, "r/d", 2, 6, true, &np, b"D").await?;
    publish_acked(&mut p, "r/d", 2, 7, true, &np, b"").await?;

    let addr = b.restart(how).await;
    drop(p);
    for round in ["first", "second"] {
        let mut c = open_clean(addr, &format!("c-reader-{round}")).await?;
        subscribe(&mut c, 1, &[("r/#", 1)]).await?;
        let mut got = collect_until_quiet(&mut c).await?;
        got.sort_by(|x, y| x.topic.cmp(&y.topic));
        let summary: Vec<(String, String, bool)> = got
            .iter()
            .map(|m| (m.topic.clone(), m.text(), m.retain))
            .collect();
        let want = vec![
            ("r/a".to_owned(), "A2".to_owned(), true),
            ("r/c".to_owned(), "C".to_owned(), true),
        ];
        ensure!(
            summary == want,
            "retained after {how:?} ({round} reader): got (topic, payload, retain) {summary:?}, \
             expected {want:?} (r/b and r/d were cleared)"
        );
        ensure!(
            got[1].content_type.as_deref() == Some("text/plain"),
            "r/c lost its Content Type across the restart: {:?}",
            got[1]
        );
        disconnect(c).await?;
    }
    Ok(())
}

#[tokio::test]
async fn retained_set_and_cleared_survive_sigterm() {
    if skip("retained_set_and_cleared_survive_sigterm", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = retained_survive(&mut b, Stop::Term).await;
    b.finish(r).await;
}

#[tokio::test]
async fn retained_set_and_cleared_survive_kill() {
    if skip("retained_set_and_cleared_survive_kill", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = retained_survive(&mut b, Stop::Kill).await;
    b.finish(r).await;
}

// ---------------------------------------------------------------------------
// (d) delayed wills pending while the broker is down

/// Will A (delay 2 s) falls due while the broker is down and must be published at once
/// after the restart; will B (delay 5 s) is due after the restart and must wait for its
/// wall-clock deadline.
async fn delayed_wills_survive(b: &mut Broker, how: Stop) -> anyhow::Result<()> {
    /// A deadline may be stored in whole seconds: allow this much earlier.
    const EARLY: Duration = Duration::from_secs(1);
    /// Restart, reconnection and a loaded machine: allow this much later.
    const LATE: Duration = Duration::from_secs(5);
    let (delay_a, delay_b) = (Duration::from_secs(2), Duration::from_secs(5));
    let downtime_until = Duration::from_secs(3);

    let addr = b.start().await;
    let (mut obs, _) = open_persistent(addr, true, "d-observer", true).await?;
    subscribe(&mut obs, 1, &[("will/#", 1)]).await?;
    disconnect(obs).await?;

    let mut wills = Vec::new();
    for (id, topic, payload, delay) in [
        ("d-will-a", "will/a", "A", delay_a),
        ("d-will-b", "will/b", "B", delay_b),
    ] {
        let will = Will {
            topic,
            payload: payload.as_bytes(),
            qos: 1,
            props: Props::new().u32(prop::WILL_DELAY_INTERVAL, u32::try_from(delay.as_secs())?),
        };
        let (c, _) = open(addr, true, id, true, &expiry(LONG_EXPIRY), Some(&will)).await?;
        wills.push((id, c));
    }
    // Both connections drop without DISCONNECT: the wills become pending [MQTT-3.1.3-9].
    let t0 = Instant::now();
    for (id, c) in wills {
        drop(c);
        b.wait_log(&format!("saying {id} disconnected"), |l| {
            l.contains("client disconnected") && l.contains(id)
        })
        .await?;
    }
    if how == Stop::Kill {
        durable_barrier(addr).await?;
    }
    let down_at = t0.elapsed();
    ensure!(
        down_at < delay_a,
        "setup too slow: the broker goes down {down_at:?} after the disconnects, after will A's \
         deadline, so the test would not check a will pending across the downtime"
    );
    b.stop(how).await;
    // Downtime: past will A's deadline, before will B's.
    tokio::time::sleep_until(t0 + downtime_until).await;
    let addr = b.start().await;

    let (mut obs, present) = open_persistent(addr, true, "d-observer", false).await?;
    ensure!(present, "d-observer: session present = 0 after {how:?}");
    let reconnected = t0.elapsed();
    let mut arrivals: Vec<(String, Duration)> = Vec::new();
    while arrivals.len() < 2 {
        let m = recv(&mut obs, delay_b + LATE)
            .await
            .with_context(|| format!("wills after {how:?}; received so far {arrivals:?}"))?;
        ensure!(
            m.topic == "will/a" || m.topic == "will/b",
            "unexpected delivery {m:?}"
        );
        ensure!(
            !arrivals.iter().any(|(t, _)| *t == m.topic),
            "{} published twice",
            m.topic
        );
        arrivals.push((m.topic.clone(), t0.elapsed()));
    }
    let at = |topic: &str| arrivals.iter().find(|(t, _)| t == topic).map(|(_, d)| *d);
    let (a, bt) = (at("will/a").unwrap(), at("will/b").unwrap());
    ensure!(
        a <= reconnected + LATE,
        "will A was due while the broker was down; it came {:?} after the observer reconnected",
        a - reconnected
    );
    ensure!(
        bt + EARLY >= delay_b,
        "will B came {bt:?} after the disconnect, before its {delay_b:?} delay [MQTT-3.1.3-9]"
    );
    ensure!(
        bt <= delay_b + LATE,
        "will B came {bt:?} after the disconnect, long after its {delay_b:?} delay"
    );
    expect_no_publish(&mut obs, "after both wills").await?;
    disconnect(obs).await
}

#[tokio::test]
async fn delayed_will_survives_sigterm() {
    if skip("delayed_will_survives_sigterm", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = delayed_wills_survive(&mut b, Stop::Term).await;
    b.finish(r).await;
}

#[tokio::test]
async fn delayed_will_survives_kill() {
    if skip("delayed_will_survives_kill", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = delayed_wills_survive(&mut b, Stop::Kill).await;
    b.finish(r).await;
}

// ---------------------------------------------------------------------------
// (e) session and message expiry across the downtime

async fn expiry_across_downtime(b: &mut Broker, how: Stop) -> anyhow::Result<()> {
    const SHORT: u32 = 2;
    const LONG: u32 = 60;
    let downtime = Duration::from_secs(3);

    let addr = b.start().await;
    let (mut long, _) = open_persistent(addr, true, "e-long", true).await?;
    subscribe(&mut long, 1, &[("exp/#", 1)]).await?;
    disconnect(long).await?;

    let mut p = open_clean(addr, "e-pub").await?;
    let mei = |s: u32| Props::new().u32(prop::MESSAGE_EXPIRY_INTERVAL, s);
    let start = Instant::now();
    publish_acked(&mut p, "exp/m", 1, 1, false, &mei(SHORT), b"short-lived").await?;
    publish_acked(&mut p, "exp/m", 1, 2, false, &mei(LONG), b"long-lived").await?;
    publish_acked(&mut p, "exp/m", 1, 3, false, &Props::new(), b"forever").await?;
    publish_acked(&mut p, "ret/short", 1, 4, true, &mei(SHORT), b"short-lived").await?;
    publish_acked(&mut p, "ret/long", 1, 5, true, &mei(LONG), b"long-lived").await?;
    publish_acked(&mut p, "ret/forever", 1, 6, true, &Props::new(), b"forever").await?;

    // A session that expires 2 s after it goes offline, with a message queued.
    let (mut short, _) = open(addr, true, "e-short", true, &expiry(SHORT), None).await?;
    subscribe(&mut short, 1, &[("exp/s", 1)]).await?;
    disconnect(short).await?;
    let offline = Instant::now();
    publish_acked(&mut p, "exp/s", 1, 7, false, &Props::new(), b"to-short").await?;
    if how == Stop::Kill {
        // The session going offline is not covered by an ack of its own.
        durable_barrier(addr).await?;
    }
    let setup = start.elapsed();
    if setup >= Duration::from_secs(u64::from(SHORT)) {
        eprintln!(
            "expiry_across_downtime: setup took {setup:?}: the short-lived messages expired \
             before the broker went down, so only part of the test measures the downtime"
        );
    }
    b.stop(how).await;
    tokio::time::sleep_until(offline + downtime).await;
    let addr = b.start().await;
    drop(p);

    // [MQTT-3.1.2-23]: the session ended while the broker was down.
    let (mut short, present) = open(addr, true, "e-short", false, &expiry(SHORT), None).await?;
    ensure!(
        !present,
        "e-short (Session Expiry Interval {SHORT} s, offline {:?}) still present after {how:?}",
        offline.elapsed()
    );
    expect_no_publish(&mut short, "e-short after its session expired").await?;
    disconnect(short).await?;

    // [MQTT-3.3.2-5]: expired messages are not delivered; [MQTT-3.3.2-6]: the others
    // carry the interval minus the time they waited, downtime included.
    let (mut long, present) = open_persistent(addr, true, "e-long", false).await?;
    ensure!(present, "e-long: session present = 0 after {how:?}");
    let got = recv_n(&mut long, 3, "e-long's queue").await?;
    ensure!(
        texts(&got) == ["long-lived", "forever", "to-short"],
        "e-long after {how:?}: got {:?}, expected the expired message dropped",
        texts(&got)
    );
    let left = got[0].message_expiry;
    let max_left = LONG - u32::try_from(downtime.as_secs())?;
    ensure!(
        left.is_some_and(|l| l > 0 && l <= max_left),
        "long-lived message: Message Expiry Interval {left:?} after waiting > {downtime:?}, \
         expected 1..={max_left}"
    );
    ensure!(
        got[1].message_expiry.is_none(),
        "a message without expiry got one: {:?}",
        got[1]
    );
    expect_no_publish(&mut long, "e-long after its queue").await?;
    disconnect(long).await?;

    let mut reader = open_clean(addr, "e-reader").await?;
    subscribe(&mut reader, 1, &[("ret/#", 1)]).await?;
    let mut got = collect_until_quiet(&mut reader).await?;
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    ensure!(
        topics == ["ret/forever", "ret/long"],
        "retained after {how:?}: got {topics:?}, expected ret/short expired"
    );
    let left = got[1].message_expiry;
    ensure!(
        left.is_some_and(|l| l > 0 && l <= max_left),
        "retained ret/long: Message Expiry Interval {left:?}, expected 1..={max_left}"
    );
    disconnect(reader).await
}

#[tokio::test]
async fn expiry_measured_across_sigterm_downtime() {
    if skip("expiry_measured_across_sigterm_downtime", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = expiry_across_downtime(&mut b, Stop::Term).await;
    b.finish(r).await;
}

#[tokio::test]
async fn expiry_measured_across_kill_downtime() {
    if skip("expiry_measured_across_kill_downtime", false) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = expiry_across_downtime(&mut b, Stop::Kill).await;
    b.finish(r).await;
}

// ---------------------------------------------------------------------------
// Configuration: persistence off, persistence_location, periodic durability

/// `persistence false`: a restart forgets sessions, queues and retained messages, and
/// nothing is written to the data dir.
#[tokio::test]
async fn persistence_false_keeps_everything_in_memory() {
    if skip("persistence_false_keeps_everything_in_memory", true) {
        return;
    }
    let mut b = Broker::new(&format!("{BASE_CONFIG}persistence false\n"));
    let r = async {
        let addr = b.start().await;
        let (mut c, _) = open_persistent(addr, false, "off-sub", true).await?;
        subscribe(&mut c, 1, &[("off/q", 1)]).await?;
        disconnect(c).await?;
        let mut p = open_clean(addr, "off-pub").await?;
        publish_acked(&mut p, "off/q", 1, 1, false, &Props::new(), b"queued").await?;
        publish_acked(&mut p, "off/r", 1, 2, true, &Props::new(), b"retained").await?;
        disconnect(p).await?;

        let addr = b.restart(Stop::Term).await;
        let (mut c, present) = open_persistent(addr, false, "off-sub", false).await?;
        ensure!(
            !present,
            "persistence false: the session survived a restart"
        );
        expect_no_publish(&mut c, "persistence false: queued message after a restart").await?;
        disconnect(c).await?;
        let mut reader = open_clean(addr, "off-reader").await?;
        subscribe(&mut reader, 1, &[("off/#", 1)]).await?;
        expect_no_publish(
            &mut reader,
            "persistence false: retained message after a restart",
        )
        .await?;
        disconnect(reader).await?;

        let files = list_files(b.data_dir());
        ensure!(
            files.is_empty(),
            "persistence false wrote to the data dir: {files:?}"
        );
        Ok(())
    }
    .await;
    b.finish(r).await;
}

/// mosquitto.conf `persistence true` + `persistence_location DIR/` (no `--data-dir`).
#[tokio::test]
async fn mosquitto_persistence_location_is_the_data_dir() {
    if skip("mosquitto_persistence_location_is_the_data_dir", true) {
        return;
    }
    let mut b = Broker::new(&format!(
        "{BASE_CONFIG}persistence true\npersistence_location {{dir}}/mosq-data/\n"
    ))
    .data_dir_from_config("mosq-data");
    let r = async {
        let addr = b.start().await;
        let mut p = open_clean(addr, "loc-pub").await?;
        publish_acked(&mut p, "loc/r", 1, 1, true, &Props::new(), b"kept").await?;
        let addr = b.restart(Stop::Kill).await;
        drop(p);
        let mut reader = open_clean(addr, "loc-reader").await?;
        subscribe(&mut reader, 1, &[("loc/#", 1)]).await?;
        let got = recv(&mut reader, REPLY).await?;
        ensure!(
            got.topic == "loc/r" && got.text() == "kept",
            "retained message after kill -9 with persistence_location: {got:?}"
        );
        ensure!(
            b.data_dir().join("FORMAT").is_file(),
            "no FORMAT file in persistence_location {}: {:?}",
            b.data_dir().display(),
            list_files(b.dir.path())
        );
        disconnect(reader).await
    }
    .await;
    b.finish(r).await;
}

/// `durability = "periodic"` through the environment: what was acknowledged more than a
/// flush interval before a `kill -9` survives.
#[tokio::test]
async fn periodic_durability_from_env_survives_kill_after_a_flush_interval() {
    if skip(
        "periodic_durability_from_env_survives_kill_after_a_flush_interval",
        false,
    ) {
        return;
    }
    let flush_interval = Duration::from_millis(100);
    let mut b = Broker::new(BASE_CONFIG)
        .env("FERROMQ_PERSISTENCE_DURABILITY", "periodic")
        .env("FERROMQ_PERSISTENCE_FLUSH_INTERVAL", "100ms");
    let r = async {
        let addr = b.start().await;
        let (mut c, _) = open_persistent(addr, true, "per-sub", true).await?;
        subscribe(&mut c, 1, &[("per/q", 2)]).await?;
        disconnect(c).await?;
        let mut p = open_clean(addr, "per-pub").await?;
        let expected: Vec<String> = (0..5).map(|i| format!("per-{i}")).collect();
        for (i, payload) in expected.iter().enumerate() {
            let qos = if i % 2 == 0 { 1 } else { 2 };
            let id = u16::try_from(i + 1)?;
            publish_acked(
                &mut p,
                "per/q",
                qos,
                id,
                false,
                &Props::new(),
                payload.as_bytes(),
            )
            .await?;
        }
        publish_acked(&mut p, "per/r", 1, 9, true, &Props::new(), b"retained").await?;
        // Not a wait for a condition: the documented loss window, ten times over.
        tokio::time::sleep(flush_interval * 10).await;
        let addr = b.restart(Stop::Kill).await;
        drop(p);
        let (mut c, present) = open_persistent(addr, true, "per-sub", false).await?;
        ensure!(present, "periodic: session present = 0 after kill -9");
        let got = recv_n(&mut c, expected.len(), "periodic: queued messages").await?;
        ensure!(texts(&got) == expected, "periodic: got {:?}", texts(&got));
        disconnect(c).await?;
        let mut reader = open_clean(addr, "per-reader").await?;
        subscribe(&mut reader, 1, &[("per/r", 1)]).await?;
        let got = recv(&mut reader, REPLY).await?;
        ensure!(got.text() == "retained", "periodic: retained {got:?}");
        disconnect(reader).await
    }
    .await;
    b.finish(r).await;
}

// ---------------------------------------------------------------------------
// Refusing a data dir: newer format, corruption

/// Every file under `dir`, relative, sorted.
fn list_files(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir).into_keys().collect()
}

/// What identifies a file's content and last write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    len: u64,
    modified: SystemTime,
    hash: u64,
}

/// Every file under `dir` (relative path) with its state.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, FileState> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, FileState>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                let mut h = DefaultHasher::new();
                fs::read(&path).unwrap_or_default().hash(&mut h);
                out.insert(
                    path.strip_prefix(root).unwrap_or(&path).to_path_buf(),
                    FileState {
                        len: meta.len(),
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        hash: h.finish(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Every file of `before` is still there, unchanged; new files are reported.
fn assert_untouched(
    before: &BTreeMap<PathBuf, FileState>,
    after: &BTreeMap<PathBuf, FileState>,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (path, state) in before {
        match after.get(path) {
            None => problems.push(format!("{} was removed", path.display())),
            Some(now) if now != state => {
                problems.push(format!("{} changed: {state:?} -> {now:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    ensure!(
        problems.is_empty(),
        "the refused data dir was modified:\n{}",
        problems.join("\n")
    );
    let new: Vec<&PathBuf> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    if !new.is_empty() {
        eprintln!("note: the refused start created {new:?} (nothing existing was overwritten)");
    }
    Ok(())
}

/// Starts the broker on a data dir it must refuse: exit 74, no ready file, stderr naming
/// the data dir (or a file in it) and one of `problem` (case-insensitive), no file changed.
async fn expect_refused(b: &mut Broker, problem: &[&str]) -> anyhow::Result<String> {
    let before = snapshot(b.data_dir());
    let refused = match b.try_start().await {
        Ok(addr) => {
            let log = b.log();
            b.kill9();
            bail!(
                "the broker started on {addr} although it should refuse the data dir; stderr:\n{log}"
            )
        }
        Err(r) => r,
    };
    ensure!(
        refused.status.code() == Some(EXIT_STORE),
        "exit status {} (expected {EXIT_STORE}); stderr:\n{}",
        refused.status,
        refused.stderr
    );
    ensure!(
        !refused.ready_file_written,
        "a ready file was written by a broker that refused to start"
    );
    let dir = b.data_dir().display().to_string();
    ensure!(
        refused.stderr.contains(&dir),
        "stderr does not name the data dir {dir}:\n{}",
        refused.stderr
    );
    let lower = refused.stderr.to_lowercase();
    ensure!(
        problem.iter().any(|w| lower.contains(w)),
        "stderr does not name the problem (one of {problem:?}):\n{}",
        refused.stderr
    );
    assert_untouched(&before, &snapshot(b.data_dir()))?;
    Ok(refused.stderr)
}

/// A data dir with state in it, stopped cleanly; returns the FORMAT file's content.
async fn populated_data_dir(b: &mut Broker, retained: usize) -> anyhow::Result<Vec<u8>> {
    let addr = b.start().await;
    let (mut c, _) = open_persistent(addr, false, "fmt-sub", true).await?;
    subscribe(&mut c, 1, &[("fmt/q", 1)]).await?;
    disconnect(c).await?;
    let mut p = open_clean(addr, "fmt-pub").await?;
    publish_acked(&mut p, "fmt/q", 1, 1, false, &Props::new(), b"queued").await?;
    for i in 0..retained {
        let payload = format!("CORRUPTION-MARKER-{i:04}-{}", "x".repeat(200));
        let id = u16::try_from(i % 60_000 + 2)?;
        publish_acked(
            &mut p,
            &format!("fmt/r/{i}"),
            1,
            id,
            true,
            &Props::new(),
            payload.as_bytes(),
        )
        .await?;
    }
    disconnect(p).await?;
    b.stop(Stop::Term).await;
    let format_path = b.data_dir().join("FORMAT");
    let format = fs::read(&format_path).with_context(|| {
        format!(
            "the contract: the store's version marker is {}; files: {:?}",
            format_path.display(),
            list_files(b.data_dir())
        )
    })?;
    ensure!(
        String::from_utf8_lossy(&format).trim() == "ferromq-store 1",
        "FORMAT holds {:?}, expected \"ferromq-store 1\"",
        String::from_utf8_lossy(&format)
    );
    Ok(format)
}

/// Subscribes to the queued and retained state of [`populated_data_dir`] and checks it.
async fn check_populated_state(addr: SocketAddr, retained: usize) -> anyhow::Result<()> {
    let (mut c, present) = open_persistent(addr, false, "fmt-sub", false).await?;
    ensure!(present, "fmt-sub: session present = 0");
    let m = recv(&mut c, REPLY).await?;
    ensure!(m.text() == "queued", "fmt-sub: got {m:?}");
    disconnect(c).await?;
    let mut reader = open_clean(addr, "fmt-reader").await?;
    subscribe(&mut reader, 1, &[("fmt/r/#", 1)]).await?;
    let got = recv_n(&mut reader, retained, "retained after the refused start").await?;
    ensure!(got.iter().all(|m| m.retain), "retained flag missing");
    disconnect(reader).await
}

#[tokio::test]
async fn newer_format_version_is_refused_and_left_untouched() {
    if skip("newer_format_version_is_refused_and_left_untouched", true) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = async {
        let original = populated_data_dir(&mut b, 3).await?;
        let format_path = b.data_dir().join("FORMAT");
        fs::write(&format_path, "ferromq-store 999\n")?;
        expect_refused(&mut b, &["999", "version", "newer"]).await?;
        // Put the marker back: the store itself must be as it was.
        fs::write(&format_path, &original)?;
        let addr = b.start().await;
        check_populated_state(addr, 3).await
    }
    .await;
    b.finish(r).await;
}

#[tokio::test]
async fn garbage_format_marker_is_refused_and_left_untouched() {
    if skip("garbage_format_marker_is_refused_and_left_untouched", true) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = async {
        populated_data_dir(&mut b, 3).await?;
        fs::write(b.data_dir().join("FORMAT"), b"\x00\xffgarb")?;
        let stderr = expect_refused(
            &mut b,
            &["corrupt", "format", "unreadable", "invalid", "version"],
        )
        .await?;
        ensure!(
            stderr.contains("FORMAT"),
            "stderr does not name the FORMAT file:\n{stderr}"
        );
        Ok(())
    }
    .await;
    b.finish(r).await;
}

/// Garbage written into the largest file of the sled store, where a retained payload
/// was (found by its marker), or in its middle.
#[tokio::test]
async fn corrupt_store_is_refused_and_left_untouched() {
    if skip("corrupt_store_is_refused_and_left_untouched", true) {
        return;
    }
    let mut b = Broker::new(BASE_CONFIG);
    let r = async {
        populated_data_dir(&mut b, 200).await?;
        let store = b.data_dir().join("store");
        let files = snapshot(&store);
        let (largest, state) = files
            .iter()
            .max_by_key(|(_, s)| s.len)
            .with_context(|| format!("the contract: a sled store in {}", store.display()))?;
        let path = store.join(largest);
        let content = fs::read(&path)?;
        let marker = b"CORRUPTION-MARKER-0100-";
        let at = content
            .windows(marker.len())
            .position(|w| w == marker)
            .unwrap_or(content.len() / 2);
        let len = 512.min(content.len().saturating_sub(at)).max(1);
        let mut rng = Rng(0xC0FF_EE00_D00D);
        let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        eprintln!(
            "corrupting {} ({} bytes): {len} bytes at offset {at} (marker found: {})",
            path.display(),
            state.len,
            at != content.len() / 2
        );
        let mut f = fs::OpenOptions::new().write(true).open(&path)?;
        f.seek(SeekFrom::Start(u64::try_from(at)?))?;
        f.write_all(&garbage)?;
        f.sync_all()?;
        drop(f);
        expect_refused(
            &mut b,
            &[
                "corrupt",
                "checksum",
                "crc",
                "damaged",
                "invalid",
                "unreadable",
                "decode",
            ],
        )
        .await
        .map(drop)
    }
    .await;
    b.finish(r).await;
}

// ---------------------------------------------------------------------------
// The crash loop

/// SplitMix64: a seeded RNG without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(names: &[&str]) -> Option<u64> {
    names.iter().find_map(|n| std::env::var(n).ok()).map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{names:?} = {v:?}: {e}"))
    })
}

/// The broker's current generation and address (`None` while it is down).
type AddrWatch = watch::Receiver<(u64, Option<SocketAddr>)>;

/// Progress a client task publishes to the main task.
#[derive(Default)]
struct Live {
    /// The generation of the broker run the client last connected to.
    generation: AtomicU64,
    /// Messages acknowledged (publishers) or delivered (subscriber) so far.
    count: AtomicU64,
}

/// Connects to the current broker, retrying until it is up (at most a minute).
async fn connect_current(
    rx: &mut AddrWatch,
    v5: bool,
    id: &str,
    props: &Props,
) -> anyhow::Result<(RawClient, bool, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (generation, addr) = *rx.borrow_and_update();
        if let Some(addr) = addr
            && let Ok(Ok((c, present))) =
                tokio::time::timeout(REPLY, open(addr, v5, id, false, props, None)).await
        {
            return Ok((c, present, generation));
        }
        ensure!(Instant::now() < deadline, "{id}: no connection for 60 s");
        let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
    }
}

/// One publisher of the crash loop.
#[derive(Debug, Clone, Copy)]
struct PubSpec {
    id: &'static str,
    topic: &'static str,
    qos: u8,
    v5: bool,
}

const PUBLISHERS: [PubSpec; 2] = [
    PubSpec {
        id: "crash-pub-q1",
        topic: "crash/q1",
        qos: 1,
        v5: false,
    },
    PubSpec {
        id: "crash-pub-q2",
        topic: "crash/q2",
        qos: 2,
        v5: true,
    },
];

/// Unacknowledged QoS 1/2 messages a publisher keeps in flight.
const WINDOW: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent, no PUBACK / PUBREC yet.
    Sent,
    /// PUBREC received (the broker owns the message), PUBREL sent, no PUBCOMP yet.
    Released,
}

#[derive(Debug, Clone, Copy)]
struct Out {
    seq: u64,
    packet_id: u16,
    stage: Stage,
}

#[derive(Debug, Default)]
struct PubOutcome {
    /// Distinct messages published (sequence numbers 0..published).
    published: u64,
    /// Sequence numbers acknowledged (PUBACK, or PUBREC for QoS 2).
    acked: Vec<u64>,
    resent_publish: u64,
    resent_pubrel: u64,
    connections: u64,
    problems: Vec<String>,
}

/// Packet ids cycle through 1..=1024: any id not in use is valid [MQTT-2.2.1-3], and a
/// small cycle reuses ids within the run as a long-lived client does, so an id the
/// broker wrongly still holds (a completed flow resurrected by a restart) swallows a
/// new message and shows up as a loss.
fn packet_id_for(seq: u64) -> u16 {
    u16::try_from(seq % 1024).unwrap_or(0) + 1
}

/// Publishes numbered messages with a window of [`WINDOW`] as a real client does: on
/// every reconnection (clean session 0) it resends what is unacknowledged, PUBLISH with
/// DUP and the same packet id, or PUBREL for PUBREC'd QoS 2 messages [MQTT-4.4.0-1].
/// Stops publishing new messages when `stop` is set and returns once all are complete.
async fn run_publisher(
    spec: PubSpec,
    mut rx: AddrWatch,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
) -> PubOutcome {
    let props = if spec.v5 {
        expiry(u32::MAX)
    } else {
        Props::new()
    };
    let np = Props::new();
    let mut out = PubOutcome::default();
    let mut inflight: VecDeque<Out> = VecDeque::new();
    'connection: loop {
        if stop.load(Ordering::SeqCst) && inflight.is_empty() {
            break;
        }
        let (mut c, present, generation) =
            match connect_current(&mut rx, spec.v5, spec.id, &props).await {
                Ok(x) => x,
                Err(e) => {
                    out.problems.push(format!("{e:#}"));
                    break;
                }
            };
        out.connections += 1;
        if !out.acked.is_empty() && !present {
            out.problems.push(format!(
                "{}: session present = 0 on connection {} although the broker had acknowledged \
                 messages of this persistent session",
                spec.id, out.connections
            ));
        }
        live.generation.store(generation, Ordering::SeqCst);
        // Without the session, a PUBREC'd message is done (the broker took ownership)
        // and an unacknowledged one is published again as new.
        if !present {
            inflight.retain(|o| o.stage == Stage::Sent);
        }
        let mut resend = Vec::new();
        for o in &inflight {
            match o.stage {
                Stage::Sent => {
                    out.resent_publish += 1;
                    resend.extend(publish(
                        spec.v5,
                        spec.topic,
                        spec.qos,
                        o.packet_id,
                        false,
                        present,
                        &np,
                        o.seq.to_string().as_bytes(),
                    ));
                }
                Stage::Released => {
                    out.resent_pubrel += 1;
                    resend.extend(pubrel(o.packet_id));
                }
            }
        }
        if !resend.is_empty() && c.send(&resend).await.is_err() {
            continue 'connection;
        }
        loop {
            if rx.has_changed().unwrap_or(true) {
                continue 'connection;
            }
            while !stop.load(Ordering::SeqCst) && inflight.len() < WINDOW {
                let seq = out.published;
                out.published += 1;
                let packet_id = packet_id_for(seq);
                inflight.push_back(Out {
                    seq,
                    packet_id,
                    stage: Stage::Sent,
                });
                let bytes = publish(
                    spec.v5,
                    spec.topic,
                    spec.qos,
                    packet_id,
                    false,
                    false,
                    &np,
                    seq.to_string().as_bytes(),
                );
                if c.send(&bytes).await.is_err() {
                    continue 'connection;
                }
            }
            if stop.load(Ordering::SeqCst) && inflight.is_empty() {
                let _ = c.send(&mqtt::disconnect_v311()).await;
                break 'connection;
            }
            let p = match c.read_packet(Duration::from_millis(200)).await {
                Incoming::Packet(p) => p,
                Incoming::TimedOut => continue,
                Incoming::Closed(_) | Incoming::Garbage(_) => continue 'connection,
            };
            if p.kind() == kind::DISCONNECT {
                let d = mqtt::Disconnect::parse(&p).ok();
                out.problems.push(format!(
                    "{}: the broker sent DISCONNECT {:?} (this client keeps at most {WINDOW} \
                     messages unacknowledged)",
                    spec.id,
                    d.map(|d| (
                        format!("{:#04x}", d.reason),
                        d.props.get_string(prop::REASON_STRING).map(str::to_owned)
                    ))
                ));
                continue 'connection;
            }
            let ack = match Ack::parse(&p, spec.v5) {
                Ok(a) => a,
                Err(e) => {
                    out.problems
                        .push(format!("{}: unexpected {p}: {e}", spec.id));
                    continue;
                }
            };
            let Some(pos) = inflight.iter().position(|o| o.packet_id == ack.packet_id) else {
                out.problems
                    .push(format!("{}: {p} for a packet id not in flight", spec.id));
                continue;
            };
            let entry = inflight[pos];
            match (ack.kind, entry.stage) {
                (kind::PUBACK, Stage::Sent) if spec.qos == 1 => {
                    if ack.reason >= 0x80 {
                        out.problems.push(format!(
                            "{}: PUBACK reason {:#04x} for message {}",
                            spec.id, ack.reason, entry.seq
                        ));
                    } else {
                        out.acked.push(entry.seq);
                        live.count.fetch_add(1, Ordering::SeqCst);
                    }
                    inflight.remove(pos);
                }
                (kind::PUBREC, stage) if spec.qos == 2 => {
                    if ack.reason >= 0x80 {
                        out.problems.push(format!(
                            "{}: PUBREC reason {:#04x} for message {}",
                            spec.id, ack.reason, entry.seq
                        ));
                        inflight.remove(pos);
                        continue;
                    }
                    if stage == Stage::Sent {
                        out.acked.push(entry.seq);
                        live.count.fetch_add(1, Ordering::SeqCst);
                        inflight[pos].stage = Stage::Released;
                    }
                    if c.send(&pubrel(ack.packet_id)).await.is_err() {
                        continue 'connection;
                    }
                }
                // Any reason: 0x92 if the broker had completed the flow before it died.
                (kind::PUBCOMP, Stage::Released) => {
                    inflight.remove(pos);
                }
                _ => out.problems.push(format!(
                    "{}: {p} for message {} in stage {:?}",
                    spec.id, entry.seq, entry.stage
                )),
            }
        }
    }
    out
}

/// One delivery to the crash loop's subscriber.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    publisher: usize,
    seq: u64,
    dup: bool,
    packet_id: u16,
    /// Which of the subscriber's connections (1-based) it came on.
    connection: u64,
}

#[derive(Debug, Default)]
struct SubOutcome {
    /// Every delivery in arrival order.
    deliveries: Vec<Delivered>,
    /// QoS 2 PUBLISHes recognised by their packet id as already received (before the
    /// PUBREL) and not delivered again, as [MQTT-4.3.3-9] requires of a receiver.
    qos2_deduplicated: u64,
    connections: u64,
    problems: Vec<String>,
}

/// The persistent subscriber (3.1.1, clean session 0) to both publishers' topics. It
/// delivers a QoS 2 message on its first PUBLISH and keeps the packet id until the
/// PUBREL (method B of MQTT 3.1.1 figure 4.3), across reconnections, as its session
/// state.
async fn run_subscriber(
    mut rx: AddrWatch,
    stop: Arc<AtomicBool>,
    subscribed: Arc<AtomicBool>,
    live: Arc<Live>,
    delivered: Arc<Mutex<HashSet<(usize, u64)>>>,
) -> SubOutcome {
    const ID: &str = "crash-sub";
    let mut out = SubOutcome::default();
    // Packet id -> the message it carried, until its PUBREL.
    let mut awaiting_pubrel: HashMap<u16, (usize, u64)> = HashMap::new();
    let filters = [(PUBLISHERS[0].topic, 1), (PUBLISHERS[1].topic, 2)];
    'connection: loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let (mut c, present, generation) =
            match connect_current(&mut rx, false, ID, &Props::new()).await {
                Ok(x) => x,
                Err(e) => {
                    out.problems.push(format!("{e:#}"));
                    break;
                }
            };
        out.connections += 1;
        let was_subscribed = subscribed.load(Ordering::SeqCst);
        if was_subscribed && !present {
            out.problems.push(format!(
                "{ID}: session present = 0 on connection {}: subscription and queue lost",
                out.connections
            ));
        }
        if !present {
            // No session: its state, the packet ids awaiting PUBREL included, is gone.
            awaiting_pubrel.clear();
        }
        if (!was_subscribed || !present)
            && c.send(&mqtt::subscribe_v311(1, &filters)).await.is_err()
        {
            continue 'connection;
        }
        live.generation.store(generation, Ordering::SeqCst);
        loop {
            if stop.load(Ordering::SeqCst) {
                let _ = c.send(&mqtt::disconnect_v311()).await;
                break 'connection;
            }
            if rx.has_changed().unwrap_or(true) {
                continue 'connection;
            }
            let p = match c.read_packet(Duration::from_millis(200)).await {
                Incoming::Packet(p) => p,
                Incoming::TimedOut => continue,
                Incoming::Closed(_) | Incoming::Garbage(_) => continue 'connection,
            };
            let reply = match p.kind() {
                kind::SUBACK => {
                    match Suback::parse(&p, false) {
                        Ok(s) if s.codes == [1, 2] => subscribed.store(true, Ordering::SeqCst),
                        other => out.problems.push(format!("{ID}: SUBACK {other:?}")),
                    }
                    None
                }
                kind::PUBREL => match Ack::parse(&p, false) {
                    Ok(a) => {
                        awaiting_pubrel.remove(&a.packet_id);
                        Some(pubcomp(a.packet_id))
                    }
                    Err(e) => {
                        out.problems.push(format!("{ID}: bad PUBREL {p}: {e}"));
                        None
                    }
                },
                kind::PUBLISH => {
                    let m = match Msg::parse(&p, false) {
                        Ok(m) => m,
                        Err(e) => {
                            out.problems.push(format!("{ID}: {e:#}"));
                            continue;
                        }
                    };
                    let Some(idx) = PUBLISHERS.iter().position(|s| s.topic == m.topic) else {
                        out.problems.push(format!("{ID}: delivery on {}", m.topic));
                        continue;
                    };
                    let Ok(seq) = m.text().parse::<u64>() else {
                        out.problems.push(format!("{ID}: payload {:?}", m.text()));
                        continue;
                    };
                    let packet_id = m.packet_id.unwrap_or(0);
                    let mut record = true;
                    let reply = match m.qos {
                        1 => Some(mqtt::puback(packet_id)),
                        2 => {
                            if let Some(&(i, s)) = awaiting_pubrel.get(&packet_id) {
                                if (i, s) == (idx, seq) {
                                    out.qos2_deduplicated += 1;
                                    record = false;
                                } else {
                                    out.problems.push(format!(
                                        "{ID}: QoS 2 packet id {packet_id} still awaiting PUBREL for \
                                         message {s} of publisher {i} carried message {seq} of \
                                         publisher {idx}: a packet id reused before its flow \
                                         completed [MQTT-2.2.1-3], or in-flight state lost"
                                    ));
                                }
                            }
                            awaiting_pubrel.insert(packet_id, (idx, seq));
                            Some(pubrec(packet_id))
                        }
                        q => {
                            out.problems
                                .push(format!("{ID}: delivery with QoS {q}: {m:?}"));
                            None
                        }
                    };
                    if record {
                        out.deliveries.push(Delivered {
                            publisher: idx,
                            seq,
                            dup: m.dup,
                            packet_id,
                            connection: out.connections,
                        });
                        delivered.lock().unwrap().insert((idx, seq));
                        live.count.fetch_add(1, Ordering::SeqCst);
                    }
                    reply
                }
                _ => {
                    out.problems.push(format!("{ID}: unexpected {p}"));
                    None
                }
            };
            if let Some(bytes) = reply
                && c.send(&bytes).await.is_err()
            {
                continue 'connection;
            }
        }
    }
    out
}

/// Per publisher: every acknowledged message delivered at least once, QoS 2 exactly
/// once, first deliveries in publishing order. Returns the problems and a summary.
fn check_crash_loop(pubs: &[(PubSpec, PubOutcome)], sub: &SubOutcome) -> (Vec<String>, String) {
    let mut problems = Vec::new();
    let mut summary = String::new();
    for (idx, (spec, out)) in pubs.iter().enumerate() {
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        let mut highest: Option<u64> = None;
        let (mut total, mut duplicates) = (0u64, 0u64);
        let mut order = Vec::new();
        let mut twice = Vec::new();
        let mut unknown = Vec::new();
        for d in &sub.deliveries {
            let (i, seq) = (d.publisher, d.seq);
            if i != idx {
                continue;
            }
            total += 1;
            if seq >= out.published {
                unknown.push(seq);
            }
            if seen.contains(&seq) {
                duplicates += 1;
                if spec.qos == 2 {
                    twice.push(seq);
                }
                continue;
            }
            if let Some(h) = highest
                && seq < h
            {
                order.push((seq, h));
            }
            seen.insert(seq);
            highest = Some(highest.map_or(seq, |h| h.max(seq)));
        }
        let acked: BTreeSet<u64> = out.acked.iter().copied().collect();
        let missing: Vec<u64> = acked.difference(&seen).copied().collect();
        let mut report = |what: &str, items: &[String]| {
            if !items.is_empty() {
                let shown: Vec<&String> = items.iter().take(10).collect();
                problems.push(format!(
                    "{} (QoS {}): {} {what}: {shown:?}{}",
                    spec.id,
                    spec.qos,
                    items.len(),
                    if items.len() > 10 { " ..." } else { "" }
                ));
            }
        };
        let fmt = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>();
        report("acknowledged messages never delivered", &fmt(&missing));
        report(
            "QoS 2 messages delivered twice (seq: [(subscriber connection, packet id, DUP)])",
            &twice
                .iter()
                .map(|seq| {
                    let copies: Vec<(u64, u16, bool)> = sub
                        .deliveries
                        .iter()
                        .filter(|d| d.publisher == idx && d.seq == *seq)
                        .map(|d| (d.connection, d.packet_id, d.dup))
                        .collect();
                    format!("{seq}: {copies:?}")
                })
                .collect::<Vec<_>>(),
        );
        report(
            "delivered messages that were never published",
            &fmt(&unknown),
        );
        report(
            "new messages delivered after a later one ((seq, highest before))",
            &order
                .iter()
                .map(|(s, h)| format!("({s}, {h})"))
                .collect::<Vec<_>>(),
        );
        summary.push_str(&format!(
            "  {} (QoS {}, MQTT {}): published {}, acknowledged {}, delivered {} distinct \
             ({total} deliveries, {duplicates} duplicates), missing {}; resent {} PUBLISH with \
             DUP and {} PUBREL over {} connections\n",
            spec.id,
            spec.qos,
            if spec.v5 { "5" } else { "3.1.1" },
            out.published,
            acked.len(),
            seen.len(),
            missing.len(),
            out.resent_publish,
            out.resent_pubrel,
            out.connections
        ));
        problems.extend(out.problems.iter().cloned());
    }
    summary.push_str(&format!(
        "  crash-sub (MQTT 3.1.1): {} deliveries, {} QoS 2 resends recognised by packet id, \
         {} connections\n",
        sub.deliveries.len(),
        sub.qos2_deduplicated,
        sub.connections
    ));
    problems.extend(sub.problems.iter().cloned());
    (collapse(problems), summary)
}

/// Identical problem lines once, with their count.
fn collapse(problems: Vec<String>) -> Vec<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for p in problems {
        match counts.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n += 1,
            None => counts.push((p, 1)),
        }
    }
    counts
        .into_iter()
        .map(|(p, n)| if n > 1 { format!("{p} ({n} times)") } else { p })
        .collect()
}

/// A QoS 1 publisher (3.1.1) and a QoS 2 publisher (5.0), each with a persistent
/// session, publish numbered messages to a persistent subscriber while the broker is
/// killed with SIGKILL at random moments (50-400 ms after it is back and traffic flows)
/// and restarted on the same data dir. Unacknowledged messages are resent as a real
/// client does (same packet id, DUP; PUBREL for PUBREC'd QoS 2), not as new messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_nothing_acknowledged() {
    if skip("crash_loop_loses_nothing_acknowledged", false) {
        return;
    }
    let cycles = env_u64(&["FERROMQ_TEST_CRASH_CYCLES", "FERROMQ_CRASH_CYCLES"]).unwrap_or(20);
    let seed = env_u64(&["FERROMQ_TEST_CRASH_SEED"]).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    eprintln!(
        "crash loop: {cycles} cycles, seed {seed} (FERROMQ_TEST_CRASH_SEED={seed} repeats it)"
    );
    let started = Instant::now();
    let mut rng = Rng(seed);
    // Large queue limits: an overflow drop would look like a lost message.
    let mut b = Broker::new(&format!("{BASE_CONFIG}max_queued_messages 1000000\n"));
    let addr = b.start().await;
    let mut generation = 1u64;
    let (tx, rx) = watch::channel((generation, Some(addr)));
    let stop_pubs = Arc::new(AtomicBool::new(false));
    let stop_sub = Arc::new(AtomicBool::new(false));
    let subscribed = Arc::new(AtomicBool::new(false));
    let sub_live = Arc::new(Live::default());
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let sub_task = tokio::spawn(run_subscriber(
        rx.clone(),
        stop_sub.clone(),
        subscribed.clone(),
        sub_live.clone(),
        delivered.clone(),
    ));
    if !wait_until(REPLY, || subscribed.load(Ordering::SeqCst)).await {
        panic!("crash-sub did not subscribe; {}", b.log_tail());
    }
    if let Err(e) = durable_barrier(addr).await {
        panic!("{e:#}\n{}", b.log_tail());
    }
    let pub_live: Vec<Arc<Live>> = PUBLISHERS
        .iter()
        .map(|_| Arc::new(Live::default()))
        .collect();
    let pub_tasks: Vec<_> = PUBLISHERS
        .iter()
        .zip(&pub_live)
        .map(|(spec, live)| {
            tokio::spawn(run_publisher(
                *spec,
                rx.clone(),
                stop_pubs.clone(),
                live.clone(),
            ))
        })
        .collect();

    for cycle in 0..=cycles {
        // Back up: every client reconnected to this run and acknowledgements flow again.
        let acked_before: Vec<u64> = pub_live
            .iter()
            .map(|l| l.count.load(Ordering::SeqCst))
            .collect();
        let ready = wait_until(Duration::from_secs(30), || {
            pub_live
                .iter()
                .chain([&sub_live])
                .all(|l| l.generation.load(Ordering::SeqCst) == generation)
                && pub_live
                    .iter()
                    .zip(&acked_before)
                    .all(|(l, before)| l.count.load(Ordering::SeqCst) > *before)
        })
        .await;
        if !ready {
            panic!(
                "cycle {cycle}: clients did not reconnect and make progress within 30 s \
                 (generations {:?}/{}, acked {:?} before, {:?} now)\n{}",
                pub_live
                    .iter()
                    .chain([&sub_live])
                    .map(|l| l.generation.load(Ordering::SeqCst))
                    .collect::<Vec<_>>(),
                generation,
                acked_before,
                pub_live
                    .iter()
                    .map(|l| l.count.load(Ordering::SeqCst))
                    .collect::<Vec<_>>(),
                b.log_tail()
            );
        }
        if cycle == cycles {
            break;
        }
        // A random moment under load.
        tokio::time::sleep(Duration::from_millis(rng.range(50, 400))).await;
        generation += 1;
        if b.dry_run {
            // Only make the clients drop and reconnect.
            let _ = tx.send((generation, Some(addr)));
        } else {
            b.kill9();
            let _ = tx.send((generation, None));
            let addr = b.start().await;
            let _ = tx.send((generation, Some(addr)));
        }
    }

    stop_pubs.store(true, Ordering::SeqCst);
    let mut pubs = Vec::new();
    for (spec, task) in PUBLISHERS.iter().zip(pub_tasks) {
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(out)) => pubs.push((*spec, out)),
            Ok(Err(e)) => panic!("{} panicked: {e}", spec.id),
            Err(_) => panic!(
                "{} did not complete its in-flight messages within 60 s\n{}",
                spec.id,
                b.log_tail()
            ),
        }
    }
    // Wait until the subscriber has everything acknowledged (or give up and report).
    let acked: Vec<(usize, u64)> = pubs
        .iter()
        .enumerate()
        .flat_map(|(i, (_, o))| o.acked.iter().map(move |s| (i, *s)))
        .collect();
    let _ = wait_until(Duration::from_secs(30), || {
        let d = delivered.lock().unwrap();
        acked.iter().all(|k| d.contains(k))
    })
    .await;
    stop_sub.store(true, Ordering::SeqCst);
    let sub = tokio::time::timeout(REPLY, sub_task)
        .await
        .expect("crash-sub stops")
        .expect("crash-sub task");

    let (problems, summary) = check_crash_loop(&pubs, &sub);
    eprintln!(
        "crash loop: {cycles} kill -9 cycles{} (seed {seed}) in {:?}\n{summary}",
        if b.dry_run {
            " (dry run: reconnections only)"
        } else {
            ""
        },
        started.elapsed()
    );
    if !problems.is_empty() {
        let logs = b.log_tail();
        b.kill9();
        let shown = problems.len().min(25);
        panic!(
            "crash loop (seed {seed}): {} problems:\n{}{}\n{summary}{logs}",
            problems.len(),
            problems[..shown].join("\n"),
            if shown < problems.len() {
                format!("\n... and {} more", problems.len() - shown)
            } else {
                String::new()
            }
        );
    }
    b.terminate().await;
}
