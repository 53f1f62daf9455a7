#!/usr/bin/env python3
"""QoS 1 throughput into a persistent session under each durability policy (issue 3),
reported in docs/BENCHMARKS.md, never asserted.

Runs `ferromq-bench persistent-qos1` (one publisher, one Clean Session 0 subscriber,
QoS 1, 64-byte payloads) against the release broker three times each with
`persistence.durability = strict` (acknowledged after the group-commit flush),
`periodic` (flushed every `flush_interval`), and persistence off; prints medians.

    cargo build --release -p ferromq -p ferromq-bench
    python3 bench/durability_bench.py [--duration 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
sys.path.insert(0, str(ROOT / "tests" / "python"))
os.environ.setdefault("FERROMQ_BIN", str(TARGET / "ferromq"))

from conftest import start_broker  # noqa: E402

POLICIES = {
    "strict": {"FERROMQ_PERSISTENCE_ENABLED": "true", "FERROMQ_PERSISTENCE_DURABILITY": "strict"},
    "periodic": {"FERROMQ_PERSISTENCE_ENABLED": "true", "FERROMQ_PERSISTENCE_DURABILITY": "periodic"},
    "no persistence": {"FERROMQ_PERSISTENCE_ENABLED": "false"},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {k: [] for k in POLICIES}
    for _ in range(args.reps):
        for name, env in POLICIES.items():
            b = start_broker("", env={**env, "FERROMQ_LOG_LEVEL": "warn"})
            try:
                out = subprocess.run(
                    [str(TARGET / "ferromq-bench"), "persistent-qos1", "--addr", f"{b.host}:{b.port}",
                     "--broker-pid", str(b.proc.pid), "--json", "--duration", str(args.duration)],
                    capture_output=True, text=True, timeout=600, check=True)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            finally:
                b.stop()
                shutil.rmtree(b.workdir, ignore_errors=True)
    print("| durability | delivered msg/s (median) | p99 latency ms | lost | duplicated |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        rate = statistics.median(r["delivered_per_s"] for r in rs)
        p99 = statistics.median((r.get("latency_p99_us") or 0) / 1000 for r in rs)
        print(f"| {name} | {rate:,.0f} | {p99:.1f} | {sum(r['lost'] for r in rs)} | {sum(r['duplicated'] for r in rs)} |")


if __name__ == "__main__":
    main()
