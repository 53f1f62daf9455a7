#!/usr/bin/env python3
"""A simulated temperature sensor: publishes JSON readings over MQTT.

The Mosquitto tutorial's "sensor" half, with paho-mqtt 2.x:

    python3 examples/sensor.py --host 127.0.0.1 --port 1883 --count 5 --interval 1

Each reading goes to `home/<room>/temperature` (default room: livingroom) at QoS 1,
for example:

    {"room": "livingroom", "seq": 1, "temperature": 21.4, "unit": "C", "ts": 1764107000.12}

`--count 0` publishes until interrupted (Ctrl-C). Pair it with examples/app.py.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time

import paho.mqtt.client as mqtt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--count", type=int, default=0, help="readings to publish; 0 = until interrupted")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)")
    p.add_argument("--room", default="livingroom", help="room name used in the topic (default livingroom)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    topic = f"home/{args.room}/temperature"
    connected = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        connected.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sensor-{args.room}")
    client.on_connect = on_connect
    try:
        client.connect(args.host, args.port, keepalive=30)
    except OSError as e:
        print(f"sensor: cannot connect to {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    client.loop_start()
    try:
        if not connected.wait(10) or result["rc"].is_failure:
            print(f"sensor: connection refused: {result.get('rc', 'no CONNACK within 10 s')}", file=sys.stderr)
            return 1

        temperature = 21.0
        seq = 0
        while args.count == 0 or seq < args.count:
            seq += 1
            temperature = round(temperature + random.uniform(-0.3, 0.3), 1)
            reading = {"room": args.room, "seq": seq, "temperature": temperature, "unit": "C",
                       "ts": round(time.time(), 2)}
            info = client.publish(topic, json.dumps(reading), qos=1)
            info.wait_for_publish(timeout=10)  # PUBACK received: the broker has it
            if not info.is_published():
                print(f"sensor: reading {seq} was not acknowledged", file=sys.stderr)
                return 1
            print(f"sensor: published {topic} {temperature} C (seq {seq})", flush=True)
            if args.count == 0 or seq < args.count:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
