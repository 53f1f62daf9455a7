"""Helpers for the observability tests: HTTP requests to a broker's operators'
listener, Prometheus text parsing, `ferromq ctl`, and a real Prometheus server.

Layout:
  `http(url, method, headers)` -- one request with urllib, errors returned not raised.
  `scrape(broker)`, `parse_metrics(text)`, `Samples` -- /metrics as a dict.
  `ctl(broker, *args)` -- runs `ferromq ctl --url <broker's http listener> ...`.
  `Prometheus` -- the Debian `prometheus` binary on loopback with a temp data dir.
  `metric_names_in(expr)` -- the metric names a PromQL expression uses.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO, ferromq_bin, http_url, wait_for


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict  # names in lower case

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def http(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 10.0) -> Response:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, r.read(), {k.lower(): v for k, v in r.headers.items()})
    except urllib.error.HTTPError as e:
        return Response(e.code, e.read(), {k.lower(): v for k, v in e.headers.items()})


def scrape(broker) -> str:
    r = http(http_url(broker) + "/metrics")
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("text/plain; version=0.0.4"), r.headers
    return r.text


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Samples(dict):
    """{(name, frozenset(labels.items())): value} with lookups by name and labels."""

    def get_value(self, name: str, **labels) -> float:
        key = (name, frozenset((k, str(v)) for k, v in labels.items()))
        if key not in self:
            raise KeyError(f"no sample {name}{labels}; have: {sorted(n for n, _ in self if n == name)}")
        return self[key]

    def total(self, name: str, **labels) -> float:
        """Sum over every sample of `name` whose labels include `labels`."""
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(v for (n, ls), v in self.items() if n == name and want <= ls)

    def names(self) -> set[str]:
        return {n for n, _ in self}


def parse_metrics(text: str) -> Samples:
    out = Samples()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparsable sample line: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def samples(broker) -> Samples:
    return parse_metrics(scrape(broker))


def ctl(broker, *args, token: str | None = None, url: str | None = None) -> subprocess.CompletedProcess:
    cmd = [str(ferromq_bin()), "ctl", "--url", url or http_url(broker)]
    if token is not None:
        cmd += ["--token", token]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# PromQL words that look like metric names but are not.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "irate", "increase", "deriv",
    "histogram_quantile", "predict_linear", "clamp_min", "clamp_max", "and", "or", "unless",
    "on", "ignoring", "group_left", "group_right", "offset", "bool", "label_values", "abs",
}


def metric_names_in(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (or a Grafana template query):
    identifiers outside strings, label matchers and ranges that are not functions,
    keywords or label names."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)       # strings
    e = re.sub(r"\{[^}]*\}", "{}", e)                  # label matchers
    e = re.sub(r"\[[^\]]*\]", "[]", e)                 # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r",\s*(instance|job|le)\s*\)", ")", e)  # label_values(metric, label)
    names = set()
    for tok in re.findall(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)", e):
        if tok in _PROMQL_WORDS or tok.startswith("__"):
            continue
        names.add(tok)
    return names


class Prometheus:
    """A real Prometheus server (Debian package `prometheus`) on a loopback port, with a
    temp data directory, scraping `targets` every second and loading `rule_files`."""

    def __init__(self, targets: list[str], rule_files: list[Path] = (), scrape_interval: str = "1s"):
        self.dir = Path(tempfile.mkdtemp(prefix="ferromq-prom-"))
        # Prometheus cannot report an ephemeral web port back, so pick a free one; a
        # race with another process is possible but short and reported clearly.
        self.port = free_port()
        rules = "".join(f"  - {p}\n" for p in rule_files)
        (self.dir / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n"
            + (f"rule_files:\n{rules}" if rules else "")
            + "scrape_configs:\n  - job_name: ferromq\n    static_configs:\n"
            + f"      - targets: {json.dumps(targets)}\n")
        self.log_path = self.dir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.url = f"http://127.0.0.1:{self.port}"

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return http(self.url + "/-/ready", timeout=1).status == 200
            except OSError:
                return False

        wait_for(ready, 60, what="prometheus /-/ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def query(self, expr: str):
        r = http(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        body = r.json()
        assert body.get("status") == "success", f"query {expr!r} failed: {body}"
        return body["data"]

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant-vector query, or None if it has no result."""
        result = self.query(expr)["result"]
        if not result:
            return None
        assert len(result) == 1, f"{expr!r} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "ferromq.json"


def dashboard_exprs() -> list[str]:
    """Every PromQL expression in the Grafana dashboard: panel targets (rows nested
    or not) and template variable queries."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            exprs.append(q)
    return exprs


def alert_exprs() -> list[str]:
    import yaml
    doc = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def instantiate(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for Prometheus."""
    e = expr.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$job", ".*")
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", e)
    if m:  # a template query: ask for the series it would read labels from
        e = f"count by ({m.group(2)}) ({m.group(1)})"
    return e


def wait_value(fn, want, timeout=30.0, what="value"):
    """Polls `fn()` until it equals `want`; returns the last value."""
    last = [None]

    def ok():
        last[0] = fn()
        return last[0] == want

    try:
        wait_for(ok, timeout, interval=0.2, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{what}: last value {last[0]!r}, wanted {want!r}") from e
    return last[0]

