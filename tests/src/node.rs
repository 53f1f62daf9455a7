//! [`TestNode`]: one broker process on ephemeral ports, in its own temp dir.
//!
//! The node writes the config, starts the binary with `-c FILE --ready-file PATH
//! --data-dir DIR`, and learns its addresses from the ready file the broker
//! writes after binding (no port guessing, no startup sleeps). stderr goes to a
//! file the tests read with [`TestNode::log`] and [`TestNode::wait_log_line`].
//!
//! The binary is `$FERROMQ_BIN`, else `<repo>/target/debug/ferromq`.
//!
//! `FERROMQ_TESTS_AGAINST=mosquitto` starts Debian's Mosquitto instead, with the
//! same config minus `listener` lines, to check the raw client and a test's
//! round-trips against the reference broker. Assertions on ferromq's own
//! contract (v5 reason codes, log wording, exit codes) are expected to fail there.
//! It is not the Python tests' `FERROMQ_TEST_BROKER`, so that running those
//! against Mosquitto does not also turn these tests red.
//!
//! Layout: [`TestNode`], [`Launch`] (how to start it), [`StartError`],
//! [`ListenerInfo`], [`ferromq_bin`].

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::wait::POLL_INTERVAL;

/// How long a broker may take to write its ready file.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a broker may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The exit code for a bad config (sysexits.h `EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

/// The broker binary under test.
pub fn ferromq_bin() -> PathBuf {
    match std::env::var_os("FERROMQ_BIN") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("target").join("debug").join("ferromq"),
    }
}

/// The workspace root: this crate lives in `<repo>/tests`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Whether `FERROMQ_TESTS_AGAINST=mosquitto` asks for the reference broker.
pub fn reference_broker() -> bool {
    std::env::var("FERROMQ_TESTS_AGAINST").is_ok_and(|v| v == "mosquitto")
}

/// One entry of the ready file's `listeners`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    pub name: String,
    pub protocol: String,
    pub addr: SocketAddr,
}

/// How to start a broker; [`Launch::new`] is the common case.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The config file's text; `None` passes `-c` a path that does not exist.
    pub config: Option<String>,
    /// Arguments appended after the standard ones.
    pub extra_args: Vec<String>,
    /// How long to wait for the ready file (or for the process to exit).
    pub timeout: Duration,
    /// Extra environment variables for the broker (`FERROMQ_<SECTION>_<KEY>` sets
    /// keys that have no mosquitto.conf directive).
    pub env: Vec<(String, String)>,
}

impl Launch {
    pub fn new(config: &str) -> Launch {
        Launch {
            config: Some(config.to_owned()),
            extra_args: Vec::new(),
            timeout: STARTUP_TIMEOUT,
            env: Vec::new(),
        }
    }
}

/// Why a broker did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot start {bin}: {source} (build it with `cargo build -p ferromq`, or set FERROMQ_BIN)"
    )]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("broker exited with {status} before it was ready; stderr:\n{stderr}")]
    Exited {
        status: ExitStatus,
        stderr: String,
        stdout: String,
        /// Whether a ready file existed when the exit was seen.
        ready_file_written: bool,
        /// The config path the broker was given.
        config_path: PathBuf,
    },
    #[error("broker not ready after {timeout:?}{detail}; stderr:\n{stderr}")]
    Timeout {
        timeout: Duration,
        detail: String,
        stderr: String,
    },
}

/// A running broker. Dropping it kills the process (SIGKILL) and removes its dir.
#[derive(Debug)]
pub struct TestNode {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    pid: u32,
    listeners: Vec<ListenerInfo>,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    ready_path: PathBuf,
    config_path: PathBuf,
    data_dir: PathBuf,
    // Last, so the process is gone before its files are removed.
    dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a broker with a mosquitto.conf-style config; panics with its log if
    /// it does not become ready. Put `listener 0 127.0.0.1` in the config.
    pub async fn start(config: &str) -> TestNode {
        match TestNode::launch(Launch::new(config)).await {
            Ok(node) => node,
            Err(e) => panic!("TestNode::start: {e}"),
        }
    }

    /// Starts a broker and waits until it is ready or has exited.
    pub async fn try_start(config: &str) -> Result<TestNode, StartError> {
        TestNode::launch(Launch::new(config)).await
    }

    /// Starts a broker as `launch` says and waits until it is ready or has exited.
    pub async fn launch(launch: Launch) -> Result<TestNode, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("ferromq-test-")
            .tempdir()
            .map_err(|source| StartError::Spawn {
                bin: ferromq_bin(),
                source,
            })?;
        let root = dir.path().to_path_buf();
        let config_path = match &launch.config {
            Some(_) => root.join("ferromq.conf"),
            None => root.join("no-such-dir").join("missing.conf"),
        };
        let ready_path = root.join("ready.json");
        let data_dir = root.join("data");
        let stderr_path = root.join("stderr.log");
        let stdout_path = root.join("stdout.log");

        let spawn_err = |bin: &Path| {
            let bin = bin.to_path_buf();
            move |source| StartError::Spawn { bin, source }
        };
        let (bin, mut cmd, mosquitto_port) = if reference_broker() {
            let port = free_port().map_err(spawn_err(Path::new("mosquitto")))?;
            let body: String = launch
                .config
                .as_deref()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("listener"))
                .map(|l| format!("{l}\n"))
                .collect();
            let conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\n{body}");
            fs::write(&config_path, conf).map_err(spawn_err(&config_path))?;
            let mut cmd = Command::new("mosquitto");
            cmd.arg("-c").arg(&config_path).arg("-v");
            (PathBuf::from("mosquitto"), cmd, Some(port))
        } else {
            if let Some(config) = &launch.config {
                fs::write(&config_path, config).map_err(spawn_err(&config_path))?;
            }
            let bin = ferromq_bin();
            let mut cmd = Command::new(&bin);
            cmd.arg("-c")
                .arg(&config_path)
                .arg("--ready-file")
                .arg(&ready_path)
                .arg("--data-dir")
                .arg(&data_dir)
                // The operators' HTTP listener defaults to 127.0.0.1:8080; many
                // nodes run at once, so it gets an ephemeral port (a later
                // `--http-listen` in `extra_args` wins).
                .arg("--http-listen")
                .arg("127.0.0.1:0");
            (bin, cmd, None)
        };
        cmd.args(&launch.extra_args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&root);
        let stderr = File::create(&stderr_path).map_err(spawn_err(&stderr_path))?;
        let stdout = File::create(&stdout_path).map_err(spawn_err(&stdout_path))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn().map_err(spawn_err(&bin))?;

        let mut node = TestNode {
            pid: child.id(),
            child: Some(child),
            exit: None,
            listeners: Vec::new(),
            stderr_path,
            stdout_path,
            ready_path,
            config_path,
            data_dir,
            dir,
        };
        node.listeners = match mosquitto_port {
            Some(port) => node.wait_mosquitto(port, launch.timeout).await?,
            None => node.wait_ready_file(launch.timeout).await?,
        };
        Ok(node)
    }

    async fn wait_ready_file(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<ListenerInfo>, StartError> {
        let deadline = Instant::now() + timeout;
        let mut last_problem = String::new();
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(self.exited_error(status));
            }
            match fs::read_to_string(&self.ready_path) {
                Ok(text) => match parse_ready(&text) {
                    // The ready file's pid is not compared with the child's:
                    // FERROMQ_BIN may be a wrapper script.
                    Ok((_pid, listeners)) => return Ok(listeners),
                    Err(e) => last_problem = format!(" (ready file {text:?}: {e})"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => last_problem = format!(" (reading ready file: {e})"),
            }
            if Instant::now() >= deadline {
                return Err(StartError::Timeout {
                    timeout,
                    detail: last_problem,
                    stderr: self.log(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn wait_mosquitto(
        &mut self,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<ListenerInfo>, StartError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(self.exited_error(status));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(vec![ListenerInfo {
                    name: "default".to_owned(),
                    protocol: "mqtt".to_owned(),
                    addr,
                }]);
            }
            if Instant::now() >= deadline {
                return Err(StartError::Timeout {
                    timeout,
                    detail: format!(" (mosquitto not listening on {addr})"),
                    stderr: self.log(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn exited_error(&self, status: ExitStatus) -> StartError {
        StartError::Exited {
            status,
            stderr: self.log(),
            stdout: fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            ready_file_written: self.ready_path.exists(),
            config_path: self.config_path.clone(),
        }
    }

    /// The first MQTT listener's address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.listeners
            .iter()
            .find(|l| l.protocol == "mqtt")
            .map(|l| l.addr)
            .unwrap_or_else(|| panic!("no mqtt listener in {:?}", self.listeners))
    }

    /// The first listener speaking `protocol` (`mqtt`, `mqtts`, `ws`, `wss`).
    pub fn listener_addr(&self, protocol: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|l| l.protocol == protocol)
            .map(|l| l.addr)
            .unwrap_or_else(|| panic!("no {protocol} listener in {:?}", self.listeners))
    }

    /// The operators' HTTP listener (`/metrics`, `/healthz`, admin API), if bound.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.protocol == "http")
            .map(|l| l.addr)
    }

    /// Every listener from the ready file.
    pub fn listeners(&self) -> &[ListenerInfo] {
        &self.listeners
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The node's temp dir (config, ready file, logs, data dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn ready_path(&self) -> &Path {
        &self.ready_path
    }

    /// Everything the broker wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until a stderr line satisfies `pred`; returns that line. Panics with
    /// the whole log after `timeout`, naming `what` was expected.
    pub async fn wait_log_line(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> String {
        let mut found = None;
        let ok = crate::wait::wait_until(timeout, || {
            found = self.log().lines().find(|l| pred(l)).map(str::to_owned);
            found.is_some()
        })
        .await;
        match found {
            Some(line) if ok => line,
            _ => panic!("no log line {what} after {timeout:?}; log:\n{}", self.log()),
        }
    }

    /// Waits until stderr contains `needle`; panics with the log after `timeout`.
    pub async fn wait_log_contains(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_line(&format!("containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
        .await
    }

    /// The exit status if the process has exited (reaps it).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Panics with the log if the broker has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit_status() {
            panic!(
                "broker exited unexpectedly with {status}; log:\n{}",
                self.log()
            );
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`) with `kill(1)`,
    /// which keeps this crate free of `unsafe`.
    pub fn signal(&mut self, name: &str) {
        if !self.is_running() {
            return;
        }
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill -{name} {}: {e}", self.pid));
        // kill fails only if the process is already gone, which the next wait sees.
        let _ = status;
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&mut self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGTERM, then waits up to [`SHUTDOWN_TIMEOUT`] for the exit. Panics (after a
    /// SIGKILL) if the broker does not exit in time.
    pub async fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        match self.wait_exit(SHUTDOWN_TIMEOUT).await {
            Some(status) => status,
            None => {
                self.kill9();
                panic!(
                    "broker did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// SIGKILL and reap; returns the exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        let child = self.child.as_mut().expect("a node always has its child");
        let _ = child.kill();
        let status = child.wait().expect("waiting for a killed broker");
        self.exit = Some(status);
        status
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parses the ready file: `{"pid":N,"listeners":[{"name","protocol","addr"}]}`.
fn parse_ready(text: &str) -> Result<(u32, Vec<ListenerInfo>), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let pid = v
        .get("pid")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .ok_or("no numeric \"pid\"")?;
    let listeners = v
        .get("listeners")
        .and_then(serde_json::Value::as_array)
        .ok_or("no \"listeners\" array")?;
    let mut out = Vec::new();
    for l in listeners {
        let field = |k: &str| {
            l.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("listener without string {k:?}: {l}"))
        };
        let addr = field("addr")?;
        out.push(ListenerInfo {
            name: field("name")?,
            protocol: field("protocol")?,
            addr: addr
                .parse()
                .map_err(|e| format!("listener addr {addr:?}: {e}"))?,
        });
    }
    if out.is_empty() {
        return Err("empty \"listeners\"".to_owned());
    }
    Ok((pid, out))
}

/// A port that was free a moment ago (reference-broker mode only: Mosquitto has
/// no ready file, so its port must be chosen up front).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ready_file_contract() {
        let (pid, l) = parse_ready(
            r#"{"pid":42,"listeners":[{"name":"default","protocol":"mqtt","addr":"127.0.0.1:1883"}]}"#,
        )
        .expect("valid ready file");
        assert_eq!(pid, 42);
        assert_eq!(l[0].addr, SocketAddr::from(([127, 0, 0, 1], 1883)));
        assert!(parse_ready(r#"{"pid":42,"listen"#).is_err());
        assert!(parse_ready(r#"{"pid":42,"listeners":[]}"#).is_err());
    }
}
