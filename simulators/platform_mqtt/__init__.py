"""The reference platform's MQTT side: records what gateways publish, sends signed commands.

It is the other end of the wire, so it imports only ``protos`` (schemas and
DSSE), never ``gateway``: if the two sides disagree about the format, the
tests see it.

What it does:
- subscribes to ``egw/v1/#`` and records every message in
  ``DATA_DIR/platform_mqtt.db`` (topic, gateway, kind, payload, message id,
  retained flag, whether a signature verified and why not);
- verifies what is signed: custody tree heads and rapid-test result
  envelopes, with the gateway's public key when it knows it (``gateway_keys``:
  a dict gateway id → key/cert, or a directory of ``<gateway_id>.pem``);
- signs commands (``Command`` as a DSSE payload, expiry and nonce) with the
  platform key and waits for the reply (MQTT 5 response topic + correlation
  data; 3.1.1: ``cmd/<name>/reply``).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protos import dsse
from protos.egw.v1 import events_pb2

__all__ = [
    "COMMAND_TYPE", "TREE_HEAD_TYPE", "PlatformMqtt", "PlatformMqttError", "Record", "TlsFiles",
    "sign_command", "load_signing_key", "find_signing_key", "send_command", "SIGNING_KEY_NAMES",
]

COMMAND_TYPE = "application/vnd.egw.command.v1+json"
TREE_HEAD_TYPE = "application/vnd.egw.tree-head.v1+json"
SIGNING_KEY_NAMES = (
    "pki/signer.key", "signing.key", "platform-signing.key", "pki/signing.key", "keys/signing.key", "ca/signing.key",
)  # never pki/platform.key: that is the TLS server key, which signs nothing (docs/trust.md)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT NOT NULL,
    gateway_id  TEXT,
    kind        TEXT NOT NULL,
    payload     BLOB NOT NULL,
    retained    INTEGER NOT NULL,
    message_id  TEXT,
    verified    INTEGER,
    note        TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_topic ON messages(topic, id);
CREATE INDEX IF NOT EXISTS messages_mid ON messages(message_id)
"""


class PlatformMqttError(Exception):
    """The platform's MQTT side could not do what was asked; the message says what to do."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # no TCP connection at all: another protocol version will not help


@dataclass(frozen=True)
class TlsFiles:
    ca_file: str | None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class Record:
    id: int
    topic: str
    gateway_id: str | None
    kind: str
    payload: bytes
    retained: bool
    message_id: str | None
    verified: bool | None
    note: str | None
    received_at: float

    def json(self) -> Any:
        return json.loads(self.payload)


KeySource = Path | str | bytes | ec.EllipticCurvePrivateKey


def load_signing_key(source: KeySource, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    if isinstance(source, ec.EllipticCurvePrivateKey):
        return source
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    key = serialization.load_pem_private_key(data, password)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PlatformMqttError("the platform signing key is not an EC P-256 key")
    return key


def find_signing_key(platform_data_dir: Path | str) -> Path:
    base = Path(platform_data_dir)
    for name in SIGNING_KEY_NAMES:
        if (base / name).is_file():
            return base / name
    raise PlatformMqttError(
        f"no platform signing key in {base} (looked for {', '.join(SIGNING_KEY_NAMES)}); "
        "start the reference platform once to create it, or pass the key path"
    )


def _public_key(source: Any) -> ec.EllipticCurvePublicKey | None:
    if source is None:
        return None
    if isinstance(source, ec.EllipticCurvePublicKey):
        return source
    key: Any
    if isinstance(source, x509.Certificate):
        key = source.public_key()
    else:
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
        key = x509.load_pem_x509_certificate(data).public_key() if b"CERTIFICATE" in data else serialization.load_pem_public_key(data)
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def sign_command(key: ec.EllipticCurvePrivateKey, gateway_id: str, name: str, args: dict[str, str] | None = None, *,
                 ttl_s: float = 60.0, nonce: str | None = None, issued_at: float | None = None) -> tuple[bytes, str]:
    """The ``SignedCommand`` JSON for one command, and its nonce."""
    issued = time.time() if issued_at is None else issued_at
    cmd = events_pb2.Command(name=name, args=args or {}, nonce=nonce or secrets.token_hex(16), gateway_id=gateway_id)
    cmd.issued_at.FromNanoseconds(int(issued * 1e9))
    cmd.expires_at.FromNanoseconds(int((issued + ttl_s) * 1e9))
    payload = json.dumps(json_format.MessageToDict(cmd), sort_keys=True, separators=(",", ":")).encode()
    envelope = dsse.sign(COMMAND_TYPE, payload, key)
    return json.dumps({"envelope": envelope.to_json()}, separators=(",", ":")).encode(), cmd.nonce


def _parse_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise PlatformMqttError(f"broker URL {url!r} must look like mqtt://host:port or mqtts://host:port")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls, parts.username, parts.password


class PlatformMqtt:
    """Subscribe to ``egw/v1/#``, record and verify; sign and send commands."""

    def __init__(self, data_dir: Path | str, broker_url: str, *, signing_key: KeySource | None = None,
                 gateway_keys: dict[str, Any] | Path | str | Callable[[str], Any] | None = None,
                 tls: TlsFiles | None = None, protocol: str = "5", client_id: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker_url = broker_url
        self.host, self.port, self.use_tls, self.username, self.password = _parse_url(broker_url)
        self.signing_key = load_signing_key(signing_key) if signing_key is not None else None
        self.gateway_keys = gateway_keys
        self.tls = tls
        self.v5 = protocol == "5"
        self.client_id = client_id or f"egw-platform-{secrets.token_hex(4)}"
        self._db = sqlite3.connect(self.data_dir / "platform_mqtt.db", isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                self._db.execute(stmt)
        self._lock = threading.Lock()
        self._replies: dict[str, tuple[threading.Event, list[events_pb2.CommandReply]]] = {}
        self._subscribed = threading.Event()
        self._client: mqtt.Client | None = None

    # ---- lifecycle ------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "PlatformMqtt":
        """Connect and subscribe. MQTT 5 first; a broker that refuses or ignores an MQTT 5 CONNECT
        (amqtt, older brokers) gets MQTT 3.1.1 instead, as the gateway's own link does."""
        if not self.v5:
            return self._start(timeout)
        try:
            return self._start(timeout / 2)
        except PlatformMqttError as exc:
            if exc.unreachable:
                raise
            print(f"platform-mqtt: {exc} with MQTT 5; trying MQTT 3.1.1", file=sys.stderr, flush=True)
            self.v5 = False
            return self._start(timeout / 2)

    def _start(self, timeout: float) -> "PlatformMqtt":
        self._subscribed.clear()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311)
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.use_tls:
            files = self.tls or TlsFiles(None)
            client.tls_set(ca_certs=files.ca_file, certfile=files.cert_file, keyfile=files.key_file)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 2)
        try:
            client.connect(self.host, self.port, 30)
        except OSError as exc:
            raise PlatformMqttError(f"cannot reach the broker at {self.broker_url}: {exc}", unreachable=True) from exc
        client.loop_start()
        self._client = client
        if not self._subscribed.wait(timeout):
            self.stop()
            raise PlatformMqttError(f"no subscription acknowledged by {self.broker_url} within {timeout:g} s")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        with self._lock:
            self._db.close()

    def __enter__(self) -> "PlatformMqtt":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe("egw/v1/#", qos=1)

    # ---- recording --------------------------------------------------------------
    def _gateway_key(self, gateway_id: str) -> ec.EllipticCurvePublicKey | None:
        source = self.gateway_keys
        try:
            if source is None:
                return None
            if callable(source):
                return _public_key(source(gateway_id))
            if isinstance(source, dict):
                return _public_key(source.get(gateway_id))
            path = Path(source) / f"{gateway_id}.pem"
            return _public_key(path) if path.is_file() else None
        except (ValueError, OSError):
            return None

    def _classify(self, topic: str, payload: bytes) -> tuple[str | None, str, str | None, bool | None, str | None]:
        """(gateway_id, kind, message_id, verified, note) for one message."""
        levels = topic.split("/")
        if len(levels) < 4 or levels[0] != "egw" or levels[1] != "v1":
            return None, "unknown-topic", None, None, "not under egw/v1/<gateway>/"
        gateway_id, rest = levels[2], levels[3:]
        try:
            doc = json.loads(payload) if payload else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return gateway_id, "malformed", None, None, "payload is not JSON"
        message_id = doc.get("messageId") if isinstance(doc, dict) else None
        kind = "/".join(rest)
        if rest == ["state"]:
            kind = "state"
        elif rest[0] == "devices":
            kind = "device-state"
        elif rest[0] == "evidence":
            kind = "evidence"
        elif rest[0] == "cmd":
            kind = "command-reply" if rest[-1] == "reply" or len(rest) > 2 else "command"
        verified: bool | None = None
        note: str | None = None
        envelope_json = None
        expected_type = None
        if rest == ["custody", "sth"] and isinstance(doc, dict):
            kind, envelope_json, expected_type = "custody-sth", doc.get("envelope"), TREE_HEAD_TYPE
        elif rest == ["results", "rapidtest"] and isinstance(doc, dict):
            kind, envelope_json = "result", doc.get("signedResult")
        if envelope_json is not None:
            key = self._gateway_key(gateway_id)
            try:
                envelope = dsse.Envelope.from_json(envelope_json)
                if key is None:
                    note = "gateway key unknown to the platform: signature not checked"
                else:
                    dsse.verify(envelope, key, expected_type)
                    verified = True
                    if kind == "custody-sth" and envelope.payload_json().get("gateway_id") != gateway_id:
                        verified, note = False, "tree head signed for another gateway"
            except dsse.EnvelopeError as exc:
                verified, note = False, str(exc)
        return gateway_id, kind, message_id, verified, note

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        gateway_id, kind, message_id, verified, note = self._classify(message.topic, bytes(message.payload))
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO messages (topic, gateway_id, kind, payload, retained, message_id, verified, note, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (message.topic, gateway_id, kind, bytes(message.payload), int(message.retain), message_id,
                     None if verified is None else int(verified), note, time.time()),
                )
            except sqlite3.ProgrammingError:
                return  # closed while stopping
        if kind == "command-reply":
            try:
                reply = json_format.Parse(message.payload, events_pb2.CommandReply())
            except (json_format.ParseError, UnicodeDecodeError):
                return
            waiter = self._replies.get(reply.nonce)
            if waiter is not None:
                waiter[1].append(reply)
                waiter[0].set()

    def records(self, topic_prefix: str = "", kind: str | None = None, after_id: int = 0) -> list[Record]:
        query = "SELECT * FROM messages WHERE id > ? AND substr(topic, 1, ?) = ?"
        params: list[Any] = [after_id, len(topic_prefix), topic_prefix]
        if kind is not None:
            query += " AND kind = ?"
            params.append(kind)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [Record(r[0], r[1], r[2], r[3], bytes(r[4]), bool(r[5]), r[6], None if r[7] is None else bool(r[7]), r[8], r[9]) for r in rows]

    # ---- commands -----------------------------------------------------------------
    def send_signed(self, gateway_id: str, name: str, signed: bytes, nonce: str, *, timeout: float = 10.0,
                    use_response_topic: bool = True) -> events_pb2.CommandReply | None:
        """Publish an already-signed (or deliberately broken) command and wait for the reply with ``nonce``."""
        if self._client is None:
            raise PlatformMqttError("start() the platform's MQTT side first")
        event = threading.Event()
        box: list[events_pb2.CommandReply] = []
        self._replies[nonce] = (event, box)
        properties = None
        if self.v5 and use_response_topic:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = f"egw/v1/{gateway_id}/cmd/{name}/reply"
            properties.CorrelationData = secrets.token_bytes(16)
        try:
            self._client.publish(f"egw/v1/{gateway_id}/cmd/{name}", signed, qos=1, properties=properties)
            return box[0] if event.wait(timeout) and box else None
        finally:
            self._replies.pop(nonce, None)

    def send_command(self, gateway_id: str, name: str, args: dict[str, str] | None = None, *, ttl_s: float = 60.0,
                     timeout: float = 10.0) -> events_pb2.CommandReply:
        if self.signing_key is None:
            raise PlatformMqttError("no platform signing key was given; commands cannot be signed")
        signed, nonce = sign_command(self.signing_key, gateway_id, name, args, ttl_s=ttl_s)
        reply = self.send_signed(gateway_id, name, signed, nonce, timeout=timeout)
        if reply is None:
            raise PlatformMqttError(
                f"no reply from gateway {gateway_id} to {name!r} within {timeout} s; is it connected to {self.broker_url}? "
                f"(its retained egw/v1/{gateway_id}/state says online/offline)"
            )
        return reply


def send_command(platform_data_dir: Path | str, broker_url: str, gateway_id: str, name: str,
                 args: dict[str, str] | None = None, *, signing_key: KeySource | None = None, timeout: float = 10.0,
                 ttl_s: float = 60.0, tls: TlsFiles | None = None) -> events_pb2.CommandReply:
    """One signed command, for ``egw platform cmd --data DIR GATEWAY NAME [ARGS]``; returns the gateway's reply."""
    key = signing_key if signing_key is not None else find_signing_key(platform_data_dir)
    with PlatformMqtt(platform_data_dir, broker_url, signing_key=key, tls=tls) as platform:
        return platform.send_command(gateway_id, name, args, ttl_s=ttl_s, timeout=timeout)
