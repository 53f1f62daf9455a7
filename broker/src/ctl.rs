//! `ferromq ctl`: the command-line client of the admin API ([`crate::http::admin`]).
//!
//! ```text
//! ferromq ctl [--url URL] [--token T] [--json] status
//! ferromq ctl clients [--limit N]
//! ferromq ctl client show ID | client kick ID
//! ferromq ctl subscriptions [--limit N]
//! ferromq ctl retained get TOPIC | retained delete TOPIC | retained list [FILTER]
//! ```
//!
//! `--url` defaults to `$FERROMQ_CTL_URL`, else `http://127.0.0.1:8080` (the default
//! `http.listen`); `--token` to `$FERROMQ_HTTP_TOKEN` (the variable that configures the
//! broker's token, so one export serves both). Output is for people unless `--json`,
//! which prints the API's JSON unchanged.
//!
//! The HTTP client is a few lines of HTTP/1.1 over a blocking `TcpStream` (one request
//! per connection, `Connection: close`, `http://` only): the admin port is a local,
//! plain-HTTP port, and this keeps a TLS stack and an HTTP client crate out of the
//! broker binary. Exit codes: 0 success, 1 the API answered with an error, 69
//! (`EX_UNAVAILABLE`) the broker could not be reached.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

/// Default base URL: the default `http.listen`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Connect, read and write timeout of one request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted (overflow policy: the command fails, naming the bound).
const MAX_RESPONSE: u64 = 256 * 1024 * 1024;
const EX_UNAVAILABLE: u8 = 69;

/// Talk to a running broker's admin API.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Base URL of the broker's HTTP listener [env: FERROMQ_CTL_URL; default http://127.0.0.1:8080].
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,
    /// Bearer token for the admin API [env: FERROMQ_HTTP_TOKEN].
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Broker version, uptime, readiness, listeners and totals.
    Status,
    /// Probe `/healthz` (or `/readyz` with `--ready`) without a token; exit 0 only on
    /// 200. For container health checks (the image has no curl).
    Health {
        /// Probe readiness (listeners bound, store open, cluster joined) instead.
        #[arg(long)]
        ready: bool,
    },
    /// List client sessions.
    Clients {
        /// Most entries to list.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Look up or disconnect one client.
    Client {
        #[command(subcommand)]
        action: ClientAction,
    },
    /// List subscriptions.
    Subscriptions {
        /// Most entries to list.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Read, list or delete retained messages.
    Retained {
        #[command(subcommand)]
        action: RetainedAction,
    },
    /// Cluster membership: status, leave, remove a node.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// This node's view: id, role, leader, term, commit/applied index, members.
    Status,
    /// Ask the leader to remove this node from the cluster.
    Leave,
    /// Remove another node (by id) from the cluster.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum ClientAction {
    /// Show a client's session and subscriptions.
    Show { id: String },
    /// Disconnect a client (MQTT 5 clients get DISCONNECT 0x98 Administrative action).
    Kick { id: String },
}

#[derive(Debug, Subcommand)]
pub enum RetainedAction {
    /// Show the retained message of a topic.
    Get { topic: String },
    /// Delete the retained message of a topic (nothing is published).
    Delete { topic: String },
    /// List retained messages matching a filter (default `#`).
    List {
        filter: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the broker at {url}: {source}")]
    Unreachable { url: String, source: std::io::Error },
    #[error("bad response from {url}: {problem}")]
    BadResponse { url: String, problem: String },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
}

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A parsed `http://host[:port][/base]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub host: String,
    pub port: u16,
    pub base: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, CtlError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            CtlError::Usage(format!(
                "unsupported URL {url:?}: only http:// URLs (the admin listener is plain HTTP)"
            ))
        })?;
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            // [v6]:port
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| CtlError::Usage(format!("bad host in URL {url:?}")))?;
            let port = after.strip_prefix(':').unwrap_or("80");
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p),
                None => (authority.to_owned(), "80"),
            }
        };
        let port = port
            .parse()
            .map_err(|_| CtlError::Usage(format!("bad port in URL {url:?}")))?;
        if host.is_empty() {
            return Err(CtlError::Usage(format!("no host in URL {url:?}")));
        }
        Ok(BaseUrl {
            host,
            port,
            base: base.to_owned(),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Sends one request and reads the whole response.
pub fn request(
    url: &BaseUrl,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<HttpResponse, CtlError> {
    let shown = format!("http://{}{}{}", url.host_header(), url.base, path);
    let unreachable = |source| CtlError::Unreachable {
        url: shown.clone(),
        source,
    };
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(unreachable)?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or_else(|| unreachable(last))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    let mut req = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferromq-ctl/{}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: 0\r\n",
        url.base,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    if let Some(t) = token {
        let _ = write!(req, "Authorization: Bearer {t}\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE + 1)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    if raw.len() as u64 > MAX_RESPONSE {
        return Err(CtlError::BadResponse {
            url: shown,
            problem: format!("larger than {MAX_RESPONSE} bytes"),
        });
    }
    parse_response(&raw).map_err(|problem| CtlError::BadResponse {
        url: shown,
        problem,
    })
}

/// Parses a complete HTTP/1.1 response (`Content-Length`, chunked, or read to close).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Runs `ferromq ctl` and returns the process exit code.
pub fn run(args: CtlArgs) -> ExitCode {
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var("FERROMQ_CTL_URL").ok())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("FERROMQ_HTTP_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let result = BaseUrl::parse(&url)
        .and_then(|base| execute(&base, token.as_deref(), &args.command, args.json));
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e @ CtlError::Unreachable { .. }) => {
            eprintln!("ferromq ctl: {e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("ferromq ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn call(url: &BaseUrl, method: &str, path: &str, token: Option<&str>) -> Result<Value, CtlError> {
    let r = request(url, method, path, token)?;
    let value: Value = serde_json::from_slice(&r.body).map_err(|e| CtlError::BadResponse {
        url: format!("{}{}", url.base, path),
        problem: format!("status {}, body is not JSON: {e}", r.status),
    })?;
    if (200..300).contains(&r.status) {
        Ok(value)
    } else {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("request failed")
            .to_owned();
        Err(CtlError::Api {
            status: r.status,
            message,
        })
    }
}

/// Performs a command and returns what to print.
pub fn execute(
    url: &BaseUrl,
    token: Option<&str>,
    command: &CtlCommand,
    json: bool,
) -> Result<String, CtlError> {
    let limit_q = |l: &Option<usize>| l.map(|n| format!("?limit={n}")).unwrap_or_default();
    let (value, human): (Value, fn(&Value) -> String) = match command {
        CtlCommand::Status => (call(url, "GET", "/api/v1/broker", token)?, show_status),
        CtlCommand::Clients { limit } => (
            call(
                url,
                "GET",
                &format!("/api/v1/clients{}", limit_q(limit)),
                token,
            )?,
            show_clients,
        ),
        CtlCommand::Client { action } => match action {
            ClientAction::Show { id } => (
                call(
                    url,
                    "GET",
                    &format!("/api/v1/clients/{}", encode_component(id)),
                    token,
                )?,
                show_client,
            ),
            ClientAction::Kick { id } => (
                call(
                    url,
                    "POST",
                    &format!("/api/v1/clients/{}/kick", encode_component(id)),
                    token,
                )?,
                |v| format!("kicked {}\n", str_of(v, "client_id")),
            ),
        },
        CtlCommand::Subscriptions { limit } => (
            call(
                url,
                "GET",
                &format!("/api/v1/subscriptions{}", limit_q(limit)),
                token,
            )?,
            show_subscriptions,
        ),
        CtlCommand::Health { ready } => {
            let path = if *ready { "/readyz" } else { "/healthz" };
            let r = request(url, "GET", path, None)?;
            if r.status != 200 {
                return Err(CtlError::Api {
                    status: r.status,
                    message: format!("{path}: {}", String::from_utf8_lossy(&r.body).trim()),
                });
            }
            return Ok("ok\n".to_owned());
        }
        CtlCommand::Cluster { action } => match action {
            ClusterAction::Status => (call(url, "GET", "/api/v1/cluster", token)?, show_cluster),
            ClusterAction::Leave => (call(url, "POST", "/api/v1/cluster/leave", token)?, |v| {
                format!("node {} left the cluster\n", v["node_id"])
            }),
            ClusterAction::Remove { id } => (
                call(url, "DELETE", &format!("/api/v1/cluster/nodes/{id}"), token)?,
                |v| format!("node {} removed from the cluster\n", v["node_id"]),
            ),
        },
        CtlCommand::Retained { action } => match action {
            RetainedAction::Get { topic } => (
                call(
                    url,
                    "GET",
                    &format!("/api/v1/retained?topic={}", encode_component(topic)),
                    token,
                )?,
                show_retained,
            ),
            RetainedAction::Delete { topic } => (
                call(
                    url,
                    "DELETE",
                    &format!("/api/v1/retained?topic={}", encode_component(topic)),
                    token,
                )?,
                |v| format!("deleted the retained message on {}\n", str_of(v, "topic")),
            ),
            RetainedAction::List { filter, limit } => {
                let mut q = format!(
                    "/api/v1/retained?filter={}",
                    encode_component(filter.as_deref().unwrap_or("#"))
                );
                if let Some(n) = limit {
                    let _ = write!(q, "&limit={n}");
                }
                (call(url, "GET", &q, token)?, show_retained_list)
            }
        },
    };
    if json {
        Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ))
    } else {
        Ok(human(&value))
    }
}

fn str_of(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = match cur.get(p) {
            Some(c) => c,
            None => return 0,
        };
    }
    cur.as_u64().unwrap_or(0)
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h{m}m")
    } else if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn show_status(v: &Value) -> String {
    let mut o = String::new();
    let ready = if v.get("ready").and_then(Value::as_bool) == Some(true) {
        "ready"
    } else {
        "NOT READY"
    };
    let _ = writeln!(
        o,
        "ferromq {}, up {}, {ready}",
        str_of(v, "version"),
        duration(num(v, &["uptime_seconds"]))
    );
    if let Some(ls) = v.get("listeners").and_then(Value::as_array) {
        let parts: Vec<String> = ls
            .iter()
            .map(|l| {
                format!(
                    "{} ({}) {}",
                    str_of(l, "name"),
                    str_of(l, "protocol"),
                    str_of(l, "addr")
                )
            })
            .collect();
        let _ = writeln!(o, "listeners:     {}", parts.join(", "));
    }
    let _ = writeln!(
        o,
        "clients:       {} connected (max {}), sessions {} online / {} offline",
        num(v, &["clients", "connected"]),
        num(v, &["clients", "maximum"]),
        num(v, &["clients", "sessions_online"]),
        num(v, &["clients", "sessions_offline"]),
    );
    let _ = writeln!(
        o,
        "subscriptions: {} (+{} shared)",
        num(v, &["subscriptions"]),
        num(v, &["shared_subscriptions"])
    );
    let _ = writeln!(
        o,
        "retained:      {} messages, {} bytes",
        num(v, &["retained", "messages"]),
        num(v, &["retained", "bytes"])
    );
    let _ = writeln!(
        o,
        "messages:      {} received, {} sent, {} dropped, {} queued, {} in flight",
        num(v, &["messages", "received"]),
        num(v, &["messages", "sent"]),
        num(v, &["messages", "dropped"]),
        num(v, &["messages", "queued"]),
        num(v, &["messages", "inflight"]),
    );
    o
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut o = String::new();
    let line = |o: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        o.push_str(l.trim_end());
        o.push('\n');
    };
    line(
        &mut o,
        &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    );
    for r in rows {
        line(&mut o, r);
    }
    o
}

fn truncated_note(v: &Value, o: &mut String) {
    if v.get("truncated").and_then(Value::as_bool) == Some(true) {
        let _ = writeln!(
            o,
            "(truncated: {} in total; use --limit)",
            num(v, &["total"])
        );
    }
}

fn show_clients(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .get("clients")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let connected = c.get("connected").and_then(Value::as_bool) == Some(true);
                    vec![
                        str_of(c, "client_id"),
                        if connected { "online" } else { "offline" }.to_owned(),
                        str_of(c, "address"),
                        str_of(c, "protocol"),
                        str_of(c, "connected_since"),
                        num(c, &["subscriptions"]).to_string(),
                        num(c, &["queued"]).to_string(),
                        num(c, &["inflight"]).to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut o = table(
        &[
            "CLIENT ID",
            "STATE",
            "ADDRESS",
            "PROTOCOL",
            "CONNECTED SINCE",
            "SUBS",
            "QUEUED",
            "INFLIGHT",
        ],
        &rows,
    );
    truncated_note(v, &mut o);
    o
}

fn show_client(v: &Value) -> String {
    let mut o = String::new();
    let connected = v.get("connected").and_then(Value::as_bool) == Some(true);
    for (label, value) in [
        ("client id", str_of(v, "client_id")),
        (
            "state",
            if connected { "online" } else { "offline" }.to_owned(),
        ),
        ("address", str_of(v, "address")),
        ("listener", str_of(v, "listener")),
        ("protocol", str_of(v, "protocol")),
        ("keep alive", str_of(v, "keep_alive")),
        ("connected since", str_of(v, "connected_since")),
        ("queued", num(v, &["queued"]).to_string()),
        ("in flight", num(v, &["inflight"]).to_string()),
        ("session expiry", str_of(v, "session_expiry_interval")),
    ] {
        let _ = writeln!(o, "{label:<16} {value}");
    }
    let subs = subscription_rows(v.get("subscriptions"), false);
    let _ = writeln!(o, "subscriptions    {}", subs.len());
    if !subs.is_empty() {
        for line in table(&["FILTER", "QOS", "GROUP"], &subs).lines() {
            let _ = writeln!(o, "  {line}");
        }
    }
    o
}

fn subscription_rows(v: Option<&Value>, with_client: bool) -> Vec<Vec<String>> {
    v.and_then(Value::as_array)
        .map(|ss| {
            ss.iter()
                .map(|s| {
                    let mut row = Vec::new();
                    if with_client {
                        row.push(str_of(s, "client_id"));
                    }
                    row.push(str_of(s, "filter"));
                    row.push(str_of(s, "qos"));
                    row.push(str_of(s, "share_group"));
                    row
                })
                .collect()
        })
        .unwrap_or_default()
}

fn show_subscriptions(v: &Value) -> String {
    let rows = subscription_rows(v.get("subscriptions"), true);
    let mut o = table(&["CLIENT ID", "FILTER", "QOS", "GROUP"], &rows);
    truncated_note(v, &mut o);
    o
}

fn payload_text(v: &Value) -> String {
    match v.get("payload").and_then(Value::as_str) {
        Some(p) => p.to_owned(),
        None => format!("base64:{}", str_of(v, "payload_base64")),
    }
}

fn show_retained(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "topic    {}", str_of(v, "topic"));
    let _ = writeln!(o, "qos      {}", str_of(v, "qos"));
    let _ = writeln!(o, "size     {} bytes", num(v, &["payload_size"]));
    let _ = writeln!(o, "age      {}", duration(num(v, &["age_seconds"])));
    let _ = writeln!(o, "payload  {}", payload_text(v));
    o
}

fn show_retained_list(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .get("retained")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    vec![
                        str_of(m, "topic"),
                        str_of(m, "qos"),
                        num(m, &["payload_size"]).to_string(),
                        payload_text(m),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut o = table(&["TOPIC", "QOS", "BYTES", "PAYLOAD"], &rows);
    if v.get("truncated").and_then(Value::as_bool) == Some(true) {
        o.push_str("(truncated; use --limit)\n");
    }
    o
}

/// `ctl cluster status`: one line for the node, one per member.
fn show_cluster(v: &Value) -> String {
    let mut out = format!(
        "node {}  role {}  leader {}  term {}  commit {}  applied {}\n",
        v["node_id"],
        str_of(v, "role"),
        v["leader"],
        v["term"],
        v["commit"],
        v["applied"],
    );
    if let Some(members) = v["members"].as_array() {
        let _ = writeln!(
            out,
            "{:<22} {:<8} {:<10} {:<24} {:<24}",
            "NODE", "ROLE", "REACHABLE", "CLUSTER ADDR", "MQTT ADDR"
        );
        for m in members {
            let _ = writeln!(
                out,
                "{:<22} {:<8} {:<10} {:<24} {:<24}",
                m["id"].to_string(),
                str_of(m, "role"),
                m["reachable"].to_string(),
                str_of(m, "addr"),
                str_of(m, "mqtt_addr"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        let u = BaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let u = BaseUrl::parse("http://[::1]:9/admin/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base.as_str()),
            ("::1", 9, "/admin")
        );
        assert_eq!(u.host_header(), "[::1]:9");
        assert_eq!(BaseUrl::parse("http://localhost").unwrap().port, 80);
        assert!(BaseUrl::parse("https://x:1").is_err());
        assert!(BaseUrl::parse("http://x:port").is_err());
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
    }

    #[test]
    fn components() {
        assert_eq!(encode_component("a/b c#+é"), "a%2Fb%20c%23%2B%C3%A9");
    }

    #[test]
    fn tables() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz\n");
    }
}
