"""Helpers for the MQTT tests: our own Mosquitto, certificates, a subscriber that records, a TCP gate.

Never touches the shared broker's process; brokers started here are killed by pid.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

SHARED_BROKER = "mqtt://127.0.0.1:1883"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Mosquitto:
    """A broker of our own on a free port; ``kill()`` is SIGKILL by pid, ``start()`` again restarts it."""

    def __init__(self, workdir: Path, extra: str = "allow_anonymous true\n", port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\npersistence false\nlog_dest stderr\n{extra}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"mosquitto-{self.port}.log"

    def start(self) -> "Mosquitto":
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        try:
            wait_port(self.port)
        except AssertionError:
            self.kill()
            raise AssertionError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Gate:
    """A TCP forwarder the test can close, so the gateway reconnects only when the test allows."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.open = threading.Event()      # new connections allowed
        self.open.set()
        self.flowing = threading.Event()   # bytes forwarded (cleared: held, as on a stalled network)
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self._stop = False
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            if not self.open.is_set():
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                down.close()
                continue
            self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_all(self) -> None:
        """Cut every forwarded connection; bytes held while frozen are discarded."""
        conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.flowing.set()

    def close(self) -> None:
        self._stop = True
        self.server.close()
        for s in self._conns:
            try:
                s.close()
            except OSError:
                pass


@dataclass
class Subscriber:
    """A plain paho subscriber that records (topic, payload, retain) in arrival order."""

    url_port: int
    topic: str
    protocol: str = "5"
    tls: dict[str, str] | None = None
    client_id: str = ""
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        proto = MQTTProtocolVersion.MQTTv5 if self.protocol == "5" else MQTTProtocolVersion.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto)
        if self.tls:
            self.client.tls_set(ca_certs=self.tls["ca"], certfile=self.tls["cert"], keyfile=self.tls["key"])
        self.client.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.2)

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))

    def start(self) -> "Subscriber":
        self.client.connect("127.0.0.1", self.url_port, 30)
        self.client.loop_start()
        assert self._subscribed.wait(15), "subscriber got no SUBACK"
        return self

    def resubscribed(self) -> threading.Event:
        self._subscribed.clear()
        return self._subscribed

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def json_on(self, suffix: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.snapshot() if t.endswith(suffix)]


# ---- certificates --------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class MiniCA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str = "egw test CA") -> "MiniCA":
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, cn: str, public_key: Any, *, server: bool = False) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256())

    def client_files(self, directory: Path, cn: str) -> dict[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        write_key(directory / f"{cn}.key", key)
        write_cert(directory / f"{cn}.crt", self.issue(cn, key.public_key()))
        write_cert(directory / "ca.crt", self.cert)
        return {"ca": str(directory / "ca.crt"), "cert": str(directory / f"{cn}.crt"), "key": str(directory / f"{cn}.key")}


def enrol_for_tls(data_dir: Path, ca: MiniCA, cn: str | None = None) -> None:
    """Give a gateway identity a CA-issued certificate (CN = gateway id unless told otherwise), as enrolment would."""
    from gateway.evidence.identity import load_identity

    ident = load_identity(data_dir)
    write_cert(ident.directory / "gateway.crt", ca.issue(cn or ident.gateway_id, ident.private_key.public_key()))
    write_cert(ident.directory / "ca.pem", ca.cert)


class Mqtt311OnlyProxy(Gate):
    """Looks like a broker that only speaks MQTT 3.1.1: an MQTT 5 CONNECT gets the 3.1.1 refusal
    "unacceptable protocol version" (CONNACK return code 1) and the connection is closed; anything
    else is forwarded to the real broker."""

    def _accept(self) -> None:
        while not self._stop:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._sniff, args=(down,), daemon=True).start()

    def _sniff(self, down: socket.socket) -> None:
        head = b""
        try:
            while len(head) < 12:  # fixed header, remaining length (1-4), "\0\4MQTT", level
                chunk = down.recv(12 - len(head))
                if not chunk:
                    down.close()
                    return
                head += chunk
            i = 1
            while head[i] & 0x80:
                i += 1
            level = head[i + 1 + 6]
            if level == 5:
                self.refused_v5 = getattr(self, "refused_v5", 0) + 1
                down.sendall(b"\x20\x02\x00\x01")
                down.close()
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            up.sendall(head)
        except OSError:
            down.close()
            return
        self._conns += [down, up]
        for a, b in ((down, up), (up, down)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
