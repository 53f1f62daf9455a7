#!/usr/bin/env python3
"""A home dashboard app: subscribes to every room's temperature and prints readings.

The Mosquitto tutorial's "app" half, with paho-mqtt 2.x:

    python3 examples/app.py --host 127.0.0.1 --port 1883

It subscribes to `home/+/temperature` (QoS 1) and prints one line per reading,
for example:

    livingroom: 21.4 C (seq 1)

It prints "app: subscribed to home/+/temperature" once the broker has acknowledged
the subscription. `--count N` exits after N readings (default: run until Ctrl-C).
Pair it with examples/sensor.py.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys

import paho.mqtt.client as mqtt

FILTER = "home/+/temperature"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--count", type=int, default=0, help="exit after N readings; 0 = until interrupted")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    events: queue.Queue = queue.Queue()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            events.put(("error", f"connection refused: {reason_code}"))
            return
        client.subscribe(FILTER, qos=1)  # also re-subscribes after a reconnect

    def on_subscribe(client, userdata, mid, reason_code_list, properties):
        if any(rc.is_failure for rc in reason_code_list):
            events.put(("error", f"subscription refused: {reason_code_list}"))
        else:
            print(f"app: subscribed to {FILTER}", flush=True)

    def on_message(client, userdata, msg):
        events.put(("message", msg))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="home-app")
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(args.host, args.port, keepalive=30)
    except OSError as e:
        print(f"app: cannot connect to {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    client.loop_start()
    received = 0
    try:
        while args.count == 0 or received < args.count:
            kind, value = events.get()
            if kind == "error":
                print(f"app: {value}", file=sys.stderr)
                return 1
            room = value.topic.split("/")[1]
            try:
                reading = json.loads(value.payload)
                line = f"{room}: {reading['temperature']} {reading.get('unit', 'C')} (seq {reading.get('seq', '?')})"
            except (ValueError, KeyError, TypeError):
                line = f"{room}: unreadable payload {value.payload!r}"
            received += 1
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
