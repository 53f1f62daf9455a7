#!/usr/bin/env python3
"""Benchmark (prints figures, asserts nothing): a million retained messages.

Fills a fresh data directory with N retained messages (small payloads) through one raw
MQTT connection, kills the broker (kill -9), restarts it on the directory and reports:
the restart time (process start to ready file, i.e. sled recovery + `Store::load`),
VmRSS after the restart, the time to answer a `#` subscribe end to end (SUBSCRIBE sent
to the last retained PUBLISH read) and VmRSS after it.

    cargo build --release -p ferromq
    FERROMQ_BIN=target/release/ferromq bench/retained_1m.py [--count 1000000] [--payload 16]

Environment variables FERROMQ_PERSISTENCE_* (cache_capacity, ...) reach the broker.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))

from bulkmqtt import BulkClient, publish_packet, vm_rss_kib  # noqa: E402
from conftest import start_broker  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--payload", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()
    n, payload = args.count, b"p" * args.payload
    work = Path(tempfile.mkdtemp(prefix="ferromq-bench-"))
    config = "sys_interval 0\n"
    try:
        b = start_broker(config, workdir=work, timeout=600)
        pub = BulkClient(b.host, b.port, "bench-pub", timeout=600)
        t = time.monotonic()
        pub.publish_many(publish_packet(f"fleet/{i // 1000:04d}/{i % 1000:03d}", payload, retain=True)
                         for i in range(n - 1))
        pub.publish_many([publish_packet("fleet/zzzz", payload, qos=1, retain=True, pid=1)], qos1_ids=[1],
                         timeout=3600)
        fill = time.monotonic() - t
        pub.disconnect()
        print(f"retained messages: {n} x {len(payload)} B payload; stored in {fill:.1f} s "
              f"({n / fill:,.0f}/s); VmRSS while filling {vm_rss_kib(b.proc.pid) >> 10} MiB", flush=True)
        b.stop(signal.SIGKILL)
        size = sum(f.stat().st_size for f in (work / "data").rglob("*") if f.is_file())
        print(f"data directory: {size >> 20} MiB", flush=True)

        (work / "ready.json").unlink(missing_ok=True)
        t = time.monotonic()
        b = start_broker(config, workdir=work, timeout=3600)
        load = time.monotonic() - t
        print(f"restart (recovery + load) to ready: {load:.2f} s; VmRSS after load "
              f"{vm_rss_kib(b.proc.pid) >> 10} MiB", flush=True)

        sub = BulkClient(b.host, b.port, "bench-sub", keep=False, timeout=600)
        t = time.monotonic()
        sub.subscribe("#", qos=0, timeout=600)
        sub.pump(lambda: sub.count >= n, timeout=3600)
        answer = time.monotonic() - t
        print(f"`#` subscribe answered end to end: {sub.count} messages in {answer:.2f} s "
              f"({sub.count / answer:,.0f}/s); VmRSS after {vm_rss_kib(b.proc.pid) >> 10} MiB", flush=True)
        sub.disconnect()
        b.stop(signal.SIGKILL)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
