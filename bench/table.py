#!/usr/bin/env python3
"""Median table of a compare.sh run: bench/table.py OUT_DIR "scenarios" "brokers".

Reads OUT_DIR/<scenario>.<broker>.<rep>.json (ferromq-bench --json) and prints a
markdown table of medians with ferromq/peer ratios, then the resource table (peak
broker RSS, broker CPU, loader CPU) so saturated-loader runs are visible.
"""
import glob
import json
import os
import statistics
import sys

# (scenario, label, field, higher_is_better, format)
ROWS = [
    ("qos0-1to1", "QoS 0, 1 -> 1, msg/s", "delivered_per_s", True, "{:,.0f}"),
    ("qos1-1to1", "QoS 1, 1 -> 1, msg/s", "delivered_per_s", True, "{:,.0f}"),
    ("qos2-1to1", "QoS 2, 1 -> 1, msg/s", "delivered_per_s", True, "{:,.0f}"),
    ("fanout-1to100", "fan-out 1 -> 100, deliveries/s", "delivered_per_s", True, "{:,.0f}"),
    ("fanin-100to1", "fan-in 100 -> 1 on `bench/#`, msg/s", "delivered_per_s", True, "{:,.0f}"),
    ("qos0-1to1/nagle", "QoS 0, 1 -> 1, ordinary client (no QUICKACK), msg/s", "delivered_per_s", True, "{:,.0f}"),
    ("fanin-100to1/nagle", "fan-in 100 -> 1, ordinary client, msg/s", "delivered_per_s", True, "{:,.0f}"),
    ("latency-5k", "latency at 5,000 msg/s QoS 0, p50 us", "latency_p50_us", False, "{:,.0f}"),
    ("latency-5k", "latency at 5,000 msg/s QoS 0, p99 us", "latency_p99_us", False, "{:,.0f}"),
    ("persistent-qos1", "QoS 1 into a persistent session, msg/s", "delivered_per_s", True, "{:,.0f}"),
    ("idle-connections", "idle connections: connects/s", "connects_per_s", True, "{:,.0f}"),
    ("idle-connections", "RSS per idle connection, bytes", "rss_per_connection_bytes", False, "{:,.0f}"),
    ("retained-100k", "100k retained, then `#`: seconds to receive all", "retained_receive_s", False, "{:.3f}"),
    ("retained-100k", "100k retained, then `#`: not received", "lost", False, "{:,.0f}"),
]


def load(out, scenario, broker):
    runs = []
    for path in sorted(glob.glob(os.path.join(out, f"{scenario.replace('/', '_')}.{broker}.*.json"))):
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError):
            pass
    return runs


def median(runs, field):
    vals = [r[field] for r in runs if r.get(field) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, f):
    return "n/a" if v is None else f.format(v)


def main():
    out, scenarios, brokers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
    peers = [b for b in brokers if b != "ferromq"]
    head = "| scenario | " + " | ".join(brokers) + " | " + " | ".join(f"ferromq/{p}" for p in peers) + " | better |"
    print(head)
    print("|" + "---|" * (len(brokers) + len(peers) + 2))
    for scenario, label, field, higher, f in ROWS:
        if scenario not in scenarios:
            continue
        meds = {b: median(load(out, scenario, b), field) for b in brokers}
        ratios = []
        for p in peers:
            a, b = meds.get("ferromq"), meds.get(p)
            ratios.append("n/a" if a is None or not b else f"{a / b:.2f}")
        print(f"| {label} | " + " | ".join(fmt(meds[b], f) for b in brokers) + " | "
              + " | ".join(ratios) + f" | {'higher' if higher else 'lower'} |")
    n = {b: 0 for b in brokers}
    for b in brokers:
        n[b] = len(glob.glob(os.path.join(out, f"*.{b}.*.json")))
    print()
    print("Resources (medians): broker peak RSS MiB / broker CPU % / loader CPU %")
    print()
    print("| scenario | " + " | ".join(brokers) + " |")
    print("|" + "---|" * (len(brokers) + 1))
    for scenario in scenarios:
        cells = []
        for b in brokers:
            runs = load(out, scenario, b)
            rss = median(runs, "broker_rss_peak_kib")
            if rss is None:
                rss = median(runs, "broker_rss_after_kib")
            cpu = median(runs, "broker_cpu_percent")
            lcpu = median(runs, "loader_cpu_percent")
            cells.append(" / ".join([
                "n/a" if rss is None else f"{rss / 1024:.1f}",
                "n/a" if cpu is None else f"{cpu:.0f}",
                "n/a" if lcpu is None else f"{lcpu:.0f}",
            ]))
        print(f"| {scenario} | " + " | ".join(cells) + " |")
    print()
    print("Runs per broker: " + ", ".join(f"{b} {n[b]}" for b in brokers)
          + ". Loader CPU >= 90 % means the loader, not the broker, may be the limit.")


if __name__ == "__main__":
    main()
