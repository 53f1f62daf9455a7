"""Test clients for ferromq's black-box MQTT suite.

Two clients live here:

* `Client` -- a thin synchronous wrapper over paho-mqtt 2.x (callback API v2, network
  thread via `loop_start`). It records everything the broker sends (CONNACK, SUBACK,
  UNSUBACK, PUBLISH with all v5 properties, server DISCONNECT) and offers waits with
  deadlines (`wait_messages`, `wait_disconnect`, ...). Automatic reconnection is off:
  a test that is disconnected must see it, not have paho paper over it.
* `RawClient` -- a tiny hand-written MQTT 3.1/3.1.1/5.0 codec over a blocking socket,
  for what paho cannot express: not acknowledging, DUP flags on redelivery, exceeding
  Receive Maximum, Topic Alias 0, CONNECT with an empty id and clean session 0, reading
  the topic alias the broker chose. It does no automatic acknowledgement or pinging.

Layout:
  Properties helpers (`props_to_paho`, `props_from_paho`) -- v5 properties as plain dicts
  with snake_case keys, e.g. {"message_expiry": 5, "user_property": [("k", "v")]}.
  `Message`, `Connack`, `Disconnect` -- records.
  `Client`, `connect` -- the paho wrapper.
  Codec (`encode_*`, `decode_packet`) and `RawClient`.

Timeouts are generous (default 10 s) because the suite runs on loaded 2-core CI
machines; tests that check that something does NOT happen use `QUIET_WINDOW` after a
positive barrier instead of sleeping.
"""

from __future__ import annotations

import itertools
import select
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

DEFAULT_TIMEOUT = 10.0
# How long "nothing else arrives" is observed after a positive barrier.
QUIET_WINDOW = 0.5

PAHO_PROTOCOL = {3: paho.MQTTv31, 4: paho.MQTTv311, 5: paho.MQTTv5}

# `@both_protocols` runs a test as an MQTT 3.1.1 client (proto=4) and a 5.0 one (proto=5).
both_protocols = pytest.mark.parametrize("proto", [4, 5], ids=["v311", "v5"])


def unique(prefix: str = "t") -> str:
    """A topic/client-id component that no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

# snake_case name -> (property id, wire type, paho attribute name)
PROPS = {
    "payload_format": (0x01, "byte", "PayloadFormatIndicator"),
    "message_expiry": (0x02, "u32", "MessageExpiryInterval"),
    "content_type": (0x03, "str", "ContentType"),
    "response_topic": (0x08, "str", "ResponseTopic"),
    "correlation_data": (0x09, "bin", "CorrelationData"),
    "subscription_identifier": (0x0B, "varint", "SubscriptionIdentifier"),
    "session_expiry": (0x11, "u32", "SessionExpiryInterval"),
    "assigned_client_id": (0x12, "str", "AssignedClientIdentifier"),
    "server_keep_alive": (0x13, "u16", "ServerKeepAlive"),
    "authentication_method": (0x15, "str", "AuthenticationMethod"),
    "authentication_data": (0x16, "bin", "AuthenticationData"),
    "request_problem_info": (0x17, "byte", "RequestProblemInformation"),
    "will_delay": (0x18, "u32", "WillDelayInterval"),
    "request_response_info": (0x19, "byte", "RequestResponseInformation"),
    "response_info": (0x1A, "str", "ResponseInformation"),
    "server_reference": (0x1C, "str", "ServerReference"),
    "reason_string": (0x1F, "str", "ReasonString"),
    "receive_maximum": (0x21, "u16", "ReceiveMaximum"),
    "topic_alias_maximum": (0x22, "u16", "TopicAliasMaximum"),
    "topic_alias": (0x23, "u16", "TopicAlias"),
    "maximum_qos": (0x24, "byte", "MaximumQoS"),
    "retain_available": (0x25, "byte", "RetainAvailable"),
    "user_property": (0x26, "pair", "UserProperty"),
    "maximum_packet_size": (0x27, "u32", "MaximumPacketSize"),
    "wildcard_sub_available": (0x28, "byte", "WildcardSubscriptionAvailable"),
    "sub_id_available": (0x29, "byte", "SubscriptionIdentifierAvailable"),
    "shared_sub_available": (0x2A, "byte", "SharedSubscriptionAvailable"),
}
PROPS_BY_ID = {pid: (name, kind) for name, (pid, kind, _) in PROPS.items()}
# Properties that may appear more than once; always lists in our dicts.
MULTI = {"user_property", "subscription_identifier"}


def props_to_paho(packet_type: int, props: dict | None) -> Properties | None:
    if not props:
        return None
    out = Properties(packet_type)
    for name, value in props.items():
        attr = PROPS[name][2]
        if name == "user_property":
            value = list(value)
        setattr(out, attr, value)
    return out


def props_from_paho(props: Properties | None) -> dict:
    if props is None:
        return {}
    out = {}
    for name, (_, _, attr) in PROPS.items():
        if hasattr(props, attr):
            value = getattr(props, attr)
            if name == "user_property":
                value = [tuple(p) for p in value]
            elif name == "subscription_identifier" and not isinstance(value, list):
                value = [value]
            out[name] = value
    return out


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------

@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False
    mid: int = 0
    properties: dict = field(default_factory=dict)
    # The topic as it was on the wire (empty when the broker used a topic alias).
    wire_topic: str | None = None

    @property
    def user_properties(self) -> list:
        return self.properties.get("user_property", [])

    @property
    def subscription_ids(self) -> list:
        return sorted(self.properties.get("subscription_identifier", []))

    @property
    def topic_alias(self):
        return self.properties.get("topic_alias")

    @property
    def message_expiry(self):
        return self.properties.get("message_expiry")

    @property
    def response_topic(self):
        return self.properties.get("response_topic")

    @property
    def correlation_data(self):
        return self.properties.get("correlation_data")

    @property
    def content_type(self):
        return self.properties.get("content_type")

    @property
    def payload_format(self):
        return self.properties.get("payload_format")


@dataclass
class Connack:
    session_present: bool
    reason_code: int
    properties: dict = field(default_factory=dict)


@dataclass
class Disconnect:
    reason_code: int
    from_server: bool  # a DISCONNECT packet from the broker (v5), not a closed socket
    properties: dict = field(default_factory=dict)


class ConnectFailed(AssertionError):
    pass


# --------------------------------------------------------------------------------------
# paho wrapper
# --------------------------------------------------------------------------------------

class Client:
    """A connected-on-demand paho client that records what it receives.

    `protocol` is 3 (MQTT 3.1), 4 (3.1.1) or 5. `clean` is Clean Session (3.x) or Clean
    Start (5). `will` is a dict: topic, payload, qos, retain, properties.
    """

    def __init__(self, broker, client_id: str | None = None, protocol: int = 5, *, clean: bool = True,
                 keepalive: int = 60, session_expiry: int | None = None, will: dict | None = None,
                 properties: dict | None = None, manual_ack: bool = False, transport: str = "tcp",
                 ws_path: str = "/mqtt", tls: dict | None = None,
                 username: str | None = None, password: str | bytes | None = None):
        # `broker` is anything with `host` and `port` (a conftest `Broker`, or one of
        # its `Endpoint`s for a TLS or WebSocket listener). `transport` is paho's
        # "tcp" or "websockets"; `tls` holds paho `tls_set` arguments (ca_certs,
        # certfile, keyfile).
        self.broker = broker
        self.transport = transport
        self.ws_path = ws_path
        self.tls = tls
        self.username = username
        self.password = password
        self.protocol = protocol
        self.client_id = unique("c") if client_id is None else client_id
        self.clean = clean
        self.keepalive = keepalive
        self.connect_properties = dict(properties or {})
        if session_expiry is not None:
            self.connect_properties["session_expiry"] = session_expiry
        self.will = will
        self.manual_ack = manual_ack

        self._cond = threading.Condition()
        self.messages: list[Message] = []
        self.connacks: list[Connack] = []
        self.disconnects: list[Disconnect] = []
        self.subacks: dict[int, list[int]] = {}
        self.unsubacks: dict[int, list[int]] = {}
        self._aliases: dict[int, str] = {}
        self._paho: paho.Client | None = None

    # ---- callbacks (paho network thread) ----

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self._aliases = {}
            self.connacks.append(Connack(bool(flags.session_present), reason_code.value,
                                         props_from_paho(properties) if self.protocol == 5 else {}))
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):
        props = props_from_paho(getattr(msg, "properties", None)) if self.protocol == 5 else {}
        wire_topic = msg.topic
        topic = wire_topic
        with self._cond:
            alias = props.get("topic_alias")
            if alias is not None:
                # paho does not resolve broker-chosen aliases; do it here [MQTT-3.3.2-12].
                if topic:
                    self._aliases[alias] = topic
                else:
                    topic = self._aliases.get(alias, "")
            self.messages.append(Message(topic, msg.payload, msg.qos, bool(msg.retain), bool(msg.dup),
                                         msg.mid, props, wire_topic))
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.unsubacks[mid] = [rc.value for rc in reason_codes] if reason_codes else []
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.disconnects.append(Disconnect(reason_code.value, flags.is_disconnect_packet_from_server,
                                               props_from_paho(properties) if self.protocol == 5 else {}))
            self._cond.notify_all()

    # ---- waiting ----

    def _wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.client_id}: timed out after {timeout}s waiting for {what}")
                self._cond.wait(min(remaining, 0.1))

    # ---- connection ----

    def connect(self, timeout: float = DEFAULT_TIMEOUT, *, clean: bool | None = None,
                check: bool = True) -> Connack:
        """Opens a new network connection (a fresh paho client each time, like a device
        rebooting) and waits for CONNACK. With `check`, a refused CONNACK raises."""
        if clean is not None:
            self.clean = clean
        kwargs = dict(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                      protocol=PAHO_PROTOCOL[self.protocol], reconnect_on_failure=False,
                      manual_ack=self.manual_ack, transport=self.transport)
        if self.protocol != 5:
            kwargs["clean_session"] = self.clean
        if self._paho is not None:  # a reconnect through the same object
            self._paho.loop_stop()
        c = paho.Client(**kwargs)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_disconnect = self._on_disconnect
        if self.transport == "websockets":
            c.ws_set_options(path=self.ws_path)
        if self.tls is not None:
            c.tls_set(**self.tls)
        # Never let paho queue more than the broker allows or hold messages back.
        c.max_inflight_messages_set(65535)
        c.max_queued_messages_set(0)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        if self.will:
            w = self.will
            c.will_set(w["topic"], w.get("payload", b""), w.get("qos", 0), w.get("retain", False),
                       props_to_paho(PacketTypes.WILLMESSAGE, w.get("properties")) if self.protocol == 5 else None)
        n_before = len(self.connacks)
        n_disc = len(self.disconnects)
        if self.protocol == 5:
            c.connect(self.broker.host, self.broker.port, self.keepalive, clean_start=self.clean,
                      properties=props_to_paho(PacketTypes.CONNECT, self.connect_properties))
        else:
            c.connect(self.broker.host, self.broker.port, self.keepalive)
        self._paho = c
        c.loop_start()
        self._wait(lambda: len(self.connacks) > n_before or len(self.disconnects) > n_disc, timeout, "CONNACK")
        if len(self.connacks) == n_before:
            raise ConnectFailed(f"{self.client_id}: connection closed before CONNACK: {self.disconnects[-1]}")
        ack = self.connacks[-1]
        if check and ack.reason_code != 0:
            raise ConnectFailed(f"{self.client_id}: CONNACK refused: {ack}")
        return ack

    @property
    def connack(self) -> Connack:
        return self.connacks[-1]

    def is_connected(self) -> bool:
        return self._paho is not None and self._paho.is_connected()

    def disconnect(self, reason_code: int = 0, properties: dict | None = None, timeout: float = DEFAULT_TIMEOUT):
        """A normal DISCONNECT (v5: with a reason code and properties); waits until the
        network thread has closed the socket."""
        c = self._paho
        n = len(self.disconnects)
        if self.protocol == 5:
            from paho.mqtt.reasoncodes import ReasonCode
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
            c.disconnect(rc, props_to_paho(PacketTypes.DISCONNECT, properties))
        else:
            c.disconnect()
        self._wait(lambda: len(self.disconnects) > n, timeout, "local disconnect")
        c.loop_stop()

    def close_abruptly(self):
        """Drops the TCP connection without DISCONNECT (the broker sees EOF)."""
        c = self._paho
        sock = c.socket()
        if sock is not None:
            try:
                # the network thread sees EOF and ends (no reconnect), without DISCONNECT
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        c.loop_stop()
        if sock is not None:
            sock.close()

    def stop(self):
        """Best-effort cleanup (tests need not call it; the broker is stopped anyway)."""
        if self._paho is not None:
            if self._paho.is_connected():
                self._paho.disconnect()
            self._paho.loop_stop()

    def wait_disconnect(self, timeout: float = DEFAULT_TIMEOUT) -> Disconnect:
        """Waits until the connection ends (server DISCONNECT or closed socket)."""
        self._wait(lambda: self.disconnects, timeout, "disconnect")
        return self.disconnects[-1]

    # ---- operations ----

    def subscribe(self, topic: str | list, qos: int = 0, *, no_local: bool = False,
                  retain_as_published: bool = False, retain_handling: int = 0, sub_id: int | None = None,
                  user_properties: list | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        """SUBSCRIBE to one filter or a list of (filter, qos) and returns SUBACK's codes."""
        filters = [(topic, qos)] if isinstance(topic, str) else list(topic)
        props = None
        if self.protocol == 5:
            p = {}
            if sub_id is not None:
                p["subscription_identifier"] = sub_id
            if user_properties:
                p["user_property"] = user_properties
            props = props_to_paho(PacketTypes.SUBSCRIBE, p)
            filters = [(f, SubscribeOptions(qos=q, noLocal=no_local, retainAsPublished=retain_as_published,
                                            retainHandling=retain_handling)) for f, q in filters]
        rc, mid = self._paho.subscribe(filters, properties=props)
        assert rc == paho.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        return self._wait(lambda: self.subacks.get(mid), timeout, f"SUBACK for {topic}")

    def unsubscribe(self, topic: str | list, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        rc, mid = self._paho.unsubscribe(topic)
        assert rc == paho.MQTT_ERR_SUCCESS, f"unsubscribe failed locally: {rc}"
        self._wait(lambda: mid in self.unsubacks, timeout, f"UNSUBACK for {topic}")
        return self.unsubacks[mid]

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                properties: dict | None = None, wait: bool = True, timeout: float = DEFAULT_TIMEOUT):
        """Publishes; with `wait` returns once the flow completed (QoS 0: written to the
        socket, QoS 1: PUBACK, QoS 2: PUBCOMP)."""
        info = self._paho.publish(topic, payload, qos, retain,
                                  props_to_paho(PacketTypes.PUBLISH, properties) if self.protocol == 5 else None)
        if wait:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"publish to {topic} not completed within {timeout}s (rc={info.rc})"
        return info

    def ack(self, msg: Message):
        """With manual_ack: acknowledge `msg` (PUBACK / PUBREC)."""
        self._paho.ack(msg.mid, msg.qos)

    # ---- received messages ----

    def received(self, topic: str | None = None) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def wait_messages(self, n: int, timeout: float = DEFAULT_TIMEOUT, topic: str | None = None,
                      where: Callable[[Message], bool] | None = None) -> list[Message]:
        """Waits until at least `n` messages (on `topic` / matching `where`) arrived;
        returns all of them that arrived so far."""
        def match():
            got = [m for m in self.messages if (topic is None or m.topic == topic) and (where is None or where(m))]
            return (got,) if len(got) >= n else None
        return self._wait(match, timeout, f"{n} message(s)" + (f" on {topic}" if topic else ""))[0]

    def wait_message(self, topic: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Message:
        return self.wait_messages(1, timeout, topic)[0]

    def clear(self):
        with self._cond:
            self.messages.clear()


def connect(broker, client_id: str | None = None, protocol: int = 5, **kw) -> Client:
    """Creates and connects a `Client`; a refused connection fails the test."""
    timeout = kw.pop("timeout", DEFAULT_TIMEOUT)
    c = Client(broker, client_id, protocol, **kw)
    c.connect(timeout)
    return c


def barrier(publisher, subscriber, topic: str | None = None, timeout: float = DEFAULT_TIMEOUT):
    """Publishes a marker from `publisher` (a Client) to `subscriber` (a Client) on a fresh
    topic, and waits for it: everything the broker handled before the marker has then been
    routed. Followed by a short quiet window by callers that assert absence."""
    topic = topic or unique("barrier")
    subscriber.subscribe(topic, 1)
    publisher.publish(topic, b"barrier", qos=1)
    subscriber.wait_messages(1, timeout, topic=topic)


def quiet(seconds: float = QUIET_WINDOW):
    """The bounded window in which something must NOT happen (after a barrier)."""
    time.sleep(seconds)


# --------------------------------------------------------------------------------------
# Raw codec
# --------------------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
                8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ",
                13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}


def enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def enc_bin(b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode()
    return struct.pack("!H", len(b)) + b


def enc_props(props: dict | None) -> bytes:
    body = bytearray()
    for name, value in (props or {}).items():
        pid, kind, _ = PROPS[name]
        values = value if name in MULTI and isinstance(value, list) else [value]
        for v in values:
            body += enc_varint(pid)
            if kind == "byte":
                body += struct.pack("!B", v)
            elif kind == "u16":
                body += struct.pack("!H", v)
            elif kind == "u32":
                body += struct.pack("!I", v)
            elif kind == "varint":
                body += enc_varint(v)
            elif kind in ("str", "bin"):
                body += enc_bin(v)
            elif kind == "pair":
                body += enc_bin(v[0]) + enc_bin(v[1])
    return enc_varint(len(body)) + bytes(body)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + enc_varint(len(body)) + body


def encode_connect(client_id: str, protocol: int = 5, *, clean: bool = True, keepalive: int = 60,
                   properties: dict | None = None, will: dict | None = None,
                   username: str | None = None, password: bytes | None = None) -> bytes:
    name, level = (b"MQIsdp", 3) if protocol == 3 else (b"MQTT", protocol)
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = enc_bin(name) + bytes([level, flags]) + struct.pack("!H", keepalive)
    if protocol == 5:
        body += enc_props(properties)
    body += enc_bin(client_id)
    if will:
        if protocol == 5:
            body += enc_props(will.get("properties"))
        body += enc_bin(will["topic"]) + enc_bin(will.get("payload", b""))
    if username is not None:
        body += enc_bin(username)
    if password is not None:
        body += enc_bin(password)
    return packet(CONNECT, 0, body)


def encode_publish(topic: str, payload: bytes | str = b"", qos: int = 0, *, retain: bool = False,
                   dup: bool = False, packet_id: int = 0, protocol: int = 5,
                   properties: dict | None = None) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode()
    body = enc_bin(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if protocol == 5:
        body += enc_props(properties)
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return packet(PUBLISH, flags, body + payload)


def encode_ack(ptype: int, packet_id: int, reason_code: int = 0, protocol: int = 5) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP (PUBREL carries the mandatory 0b0010 flags)."""
    body = struct.pack("!H", packet_id)
    if protocol == 5 and reason_code:
        body += bytes([reason_code])
    return packet(ptype, 0x02 if ptype == PUBREL else 0, body)


def encode_subscribe(packet_id: int, filters: Iterable[tuple], protocol: int = 5,
                     properties: dict | None = None) -> bytes:
    """`filters`: (filter, options byte) -- options = qos | no_local<<2 | rap<<3 | rh<<4."""
    body = struct.pack("!H", packet_id)
    if protocol == 5:
        body += enc_props(properties)
    for f, opts in filters:
        body += enc_bin(f) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def encode_unsubscribe(packet_id: int, filters: Iterable[str], protocol: int = 5) -> bytes:
    body = struct.pack("!H", packet_id)
    if protocol == 5:
        body += enc_props(None)
    for f in filters:
        body += enc_bin(f)
    return packet(UNSUBSCRIBE, 0x02, body)


def encode_disconnect(reason_code: int = 0, protocol: int = 5, properties: dict | None = None) -> bytes:
    if protocol != 5 or (reason_code == 0 and not properties):
        return packet(DISCONNECT, 0, b"")
    return packet(DISCONNECT, 0, bytes([reason_code]) + enc_props(properties))


def encode_pingreq() -> bytes:
    return packet(PINGREQ, 0, b"")


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if self.left() < n:
            raise ValueError("malformed packet: truncated")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("!I", self.take(4))[0]

    def varint(self) -> int:
        mult, value = 1, 0
        for _ in range(4):
            b = self.u8()
            value += (b & 0x7F) * mult
            if not b & 0x80:
                return value
            mult *= 128
        raise ValueError("malformed variable byte integer")

    def bin(self) -> bytes:
        return self.take(self.u16())

    def str(self) -> str:
        return self.bin().decode()

    def props(self) -> dict:
        end = self.varint() + self.pos
        out: dict = {}
        while self.pos < end:
            name, kind = PROPS_BY_ID[self.varint()]
            if kind == "byte":
                v = self.u8()
            elif kind == "u16":
                v = self.u16()
            elif kind == "u32":
                v = self.u32()
            elif kind == "varint":
                v = self.varint()
            elif kind == "str":
                v = self.str()
            elif kind == "bin":
                v = self.bin()
            else:
                v = (self.str(), self.str())
            if name in MULTI:
                out.setdefault(name, []).append(v)
            else:
                out[name] = v
        return out


@dataclass
class Packet:
    """A decoded packet from the broker. Fields not used by a type keep defaults."""
    type: int
    flags: int
    raw: bytes = b""
    packet_id: int = 0
    reason_code: int = 0
    reason_codes: list = field(default_factory=list)
    session_present: bool = False
    properties: dict = field(default_factory=dict)
    topic: str = ""
    payload: bytes = b""

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.type, str(self.type))

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01)

    def __repr__(self):
        extra = f" topic={self.topic!r} qos={self.qos} dup={self.dup} retain={self.retain}" \
            if self.type == PUBLISH else ""
        return (f"<{self.name} id={self.packet_id} rc={self.reason_code:#x} codes={self.reason_codes}"
                f"{extra} props={self.properties} payload={self.payload[:40]!r}>")


def decode_packet(first: int, body: bytes, protocol: int) -> Packet:
    ptype, flags = first >> 4, first & 0x0F
    p = Packet(ptype, flags, body)
    r = Reader(body)
    v5 = protocol == 5
    if ptype == CONNACK:
        p.session_present = bool(r.u8() & 1)
        p.reason_code = r.u8()
        if v5 and r.left():
            p.properties = r.props()
    elif ptype == PUBLISH:
        p.topic = r.str()
        if p.qos:
            p.packet_id = r.u16()
        if v5:
            p.properties = r.props()
        p.payload = r.take(r.left())
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        p.packet_id = r.u16()
        if v5 and r.left():
            p.reason_code = r.u8()
            if r.left():
                p.properties = r.props()
    elif ptype in (SUBACK, UNSUBACK):
        p.packet_id = r.u16()
        if v5:
            p.properties = r.props()
        p.reason_codes = list(r.take(r.left()))
    elif ptype in (DISCONNECT, AUTH):
        if r.left():
            p.reason_code = r.u8()
            if r.left():
                p.properties = r.props()
    return p


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """A blocking single-connection MQTT client speaking hand-encoded packets.

    Received packets go to `self.received` (in order); `expect` pops the first one that
    matches. Nothing is acknowledged automatically.
    """

    def __init__(self, broker, protocol: int = 5, timeout: float = DEFAULT_TIMEOUT,
                 source: str | None = None):
        """`source` binds the client to a local address (e.g. "127.0.0.2"), so a test
        can act as a second source address on loopback."""
        self.protocol = protocol
        self.sock = socket.create_connection((broker.host, broker.port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.received: list[Packet] = []
        self.closed = False
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return (next(self._ids) - 1) % 65535 + 1

    # ---- sending ----

    def send(self, data: bytes):
        self.sock.sendall(data)

    def connect(self, client_id: str = "", *, clean: bool = True, keepalive: int = 60,
                properties: dict | None = None, will: dict | None = None, check: bool = True,
                timeout: float = DEFAULT_TIMEOUT, username: str | None = None,
                password: bytes | str | None = None) -> Packet:
        if isinstance(password, str):
            password = password.encode()
        self.send(encode_connect(client_id, self.protocol, clean=clean, keepalive=keepalive,
                                 properties=properties, will=will, username=username, password=password))
        ack = self.expect(CONNACK, timeout)
        if check:
            assert ack.reason_code == 0, f"CONNACK refused: {ack}"
        return ack

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, *, retain: bool = False,
                dup: bool = False, packet_id: int | None = None, properties: dict | None = None) -> int:
        if qos and packet_id is None:
            packet_id = self.next_id()
        self.send(encode_publish(topic, payload, qos, retain=retain, dup=dup, packet_id=packet_id or 0,
                                 protocol=self.protocol, properties=properties))
        return packet_id or 0

    def subscribe(self, topic: str, qos: int = 0, *, no_local: bool = False, rap: bool = False,
                  retain_handling: int = 0, sub_id: int | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        pid = self.next_id()
        opts = qos | (no_local << 2) | (rap << 3) | (retain_handling << 4)
        props = {"subscription_identifier": sub_id} if sub_id is not None else None
        self.send(encode_subscribe(pid, [(topic, opts)], self.protocol, props))
        ack = self.expect(SUBACK, timeout, lambda p: p.packet_id == pid)
        return ack.reason_codes

    def ack(self, ptype: int, packet_id: int, reason_code: int = 0):
        self.send(encode_ack(ptype, packet_id, reason_code, self.protocol))

    def ping(self):
        self.send(encode_pingreq())

    def disconnect(self, reason_code: int = 0, properties: dict | None = None):
        self.send(encode_disconnect(reason_code, self.protocol, properties))
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- receiving ----

    def _read_one(self, deadline: float) -> Packet | None:
        """Reads one packet into `received`; returns None at the deadline, raises Closed at EOF."""
        while True:
            pkt = self._parse()
            if pkt is not None:
                self.received.append(pkt)
                return pkt
            if self.closed:
                raise Closed()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                return None
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, OSError):
                data = b""
            if not data:
                self.closed = True
            self.buf += data

    def _parse(self) -> Packet | None:
        if len(self.buf) < 2:
            return None
        mult, length, i = 1, 0, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if len(self.buf) < i + length:
            return None
        first, body = self.buf[0], self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        return decode_packet(first, body, self.protocol)

    def expect(self, ptype: int, timeout: float = DEFAULT_TIMEOUT,
               where: Callable[[Packet], bool] | None = None) -> Packet:
        """Pops and returns the first received packet of `ptype` (matching `where`)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, p in enumerate(self.received):
                if p.type == ptype and (where is None or where(p)):
                    return self.received.pop(i)
            try:
                self._read_one(deadline)
            except Closed:
                raise AssertionError(f"connection closed while waiting for {PACKET_NAMES[ptype]}; "
                                     f"received: {self.received}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {PACKET_NAMES[ptype]}; "
                                   f"received: {self.received}")

    def expect_publishes(self, n: int, timeout: float = DEFAULT_TIMEOUT,
                         where: Callable[[Packet], bool] | None = None) -> list[Packet]:
        return [self.expect(PUBLISH, timeout, where) for _ in range(n)]

    def collect(self, seconds: float) -> list[Packet]:
        """Reads for a bounded window (used only for "nothing more arrives" checks)
        and returns everything received and not yet popped."""
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                self._read_one(deadline)
        except Closed:
            pass
        return list(self.received)

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> Packet | None:
        """Waits until the broker closes the connection; returns the DISCONNECT it sent
        before closing, if any."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._read_one(deadline)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"connection still open after {timeout}s; received: {self.received}")
        except Closed:
            pass
        for p in self.received:
            if p.type == DISCONNECT:
                return p
        return None


def raw_connect(broker, client_id: str = "", protocol: int = 5, **kw) -> RawClient:
    c = RawClient(broker, protocol)
    c.connect(client_id, **kw)
    return c
