"""The MQTT link's settings and counters, and the constants its modules share.

``LinkConfig`` is what ``egw run`` and ``egw sync --mqtt`` configure; ``LinkStats`` is what the
link counts (benchmarks and the ``status`` command read it). Kept apart from the link itself so
the parts of the link (``mqtt_session``, ``mqtt_pump``, ``mqtt_replies``) share them without
importing one another.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gateway import __version__
from gateway.errors import ConfigError
from gateway.uplink import outbox as ob
from gateway.uplink.commands import PlatformKeySource
from protos.egw.v1 import events_pb2

__all__ = [
    "BATCH_READ", "DELETE_BATCH", "LINK_NAME", "PLAINTEXT_FLAG", "PLAINTEXT_KEY", "REFILL_AT", "SEQ_PROPERTY", "BrokerUrl", "LinkConfig",
    "LinkStats", "gateway_state", "is_loopback", "parse_broker_url",
]

LINK_NAME = "mqtt"
SEQ_PROPERTY = "egw-seq"  # MQTT 5 user property: the message's outbox id (see gateway.uplink.mqtt_link)
BATCH_READ = 500
# A lane's buffer is read further when fewer rows than this are left in it: paho's network thread
# publishes from the buffers, and the supervisor reads ahead so they never run dry mid-flood.
REFILL_AT = 128
# PUBACKed ids are deleted in batches of this many (or when nothing is in flight): a crash
# re-sends at most window + DELETE_BATCH messages, each a duplicate detectable by message id.
# 256, not 64: each delete transaction costs the writer thread a fixed overhead that a flood paid
# 20 µs/msg for at 64, ~14 at 256 (#18); a duplicate is the price, never a loss.
DELETE_BATCH = 256


@dataclass(frozen=True)
class BrokerUrl:
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def redacted(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


PLAINTEXT_FLAG = "--allow-plaintext-password"
PLAINTEXT_KEY = "allow_plaintext_password"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP: a password sent there never crosses a network."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_broker_url(url: str, *, allow_plaintext_password: bool = False) -> BrokerUrl:
    """``mqtt://[user[:pass]@]host[:1883]`` or ``mqtts://…[:8883]`` (TLS, client certificate).

    A password over plain ``mqtt://`` to a host that is not loopback crosses the network in clear,
    readable by anyone on the path, and is refused unless ``allow_plaintext_password`` says the
    operator chose it (``[mqtt] allow_plaintext_password = true`` or ``--allow-plaintext-password``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    scheme = "mqtts" if parts.scheme in ("mqtts", "ssl") else "mqtt"
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host", "e.g. mqtt://127.0.0.1:1883")
    try:
        port = parts.port or (8883 if scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} has a bad port") from exc
    broker = BrokerUrl(scheme, parts.hostname, port, unquote(parts.username) if parts.username else None,
                       unquote(parts.password) if parts.password else None)
    if broker.password and not broker.tls and not is_loopback(broker.host) and not allow_plaintext_password:
        raise ConfigError(
            f"broker URL {broker.redacted()} would send the MQTT password in clear over the network",
            f"use mqtts:// (TLS with the enrolled certificate); only on a network you trust, set "
            f"`{PLAINTEXT_KEY} = true` under [mqtt] in gateway.toml or pass {PLAINTEXT_FLAG}")
    return broker


@dataclass
class LinkConfig:
    broker_url: str
    protocol: str = "auto"          # "5", "3.1.1", or "auto" (5, falling back to 3.1.1)
    max_inflight: int = 20          # paho's own limit (PERFORMANCE-NOTES: 20 beats 1000)
    window: int = 0                 # messages handed to paho un-acked; 0 → max_inflight (measured: 2× is slower)
    keepalive: int = 30
    backoff_min_s: float = 0.2
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    ca_file: Path | None = None     # default DATA_DIR/identity/ca.pem, else the system store
    cert_file: Path | None = None   # default DATA_DIR/identity/gateway.crt
    key_file: Path | None = None    # default DATA_DIR/identity/gateway.key (EGW_KEY_PASSPHRASE)
    platform_cert: PlatformKeySource = None  # default DATA_DIR/identity/platform.pem when present
    handle_commands: bool = True
    sth_interval_s: float = 1.0     # custody tree heads: at most one per interval, only on change
    poll_interval_s: float = 0.2    # how soon rows queued by other processes are noticed
    client_id: str | None = None    # default: the gateway id
    allow_plaintext_password: bool = False  # mqtt://user:pass@ to a non-loopback host (see parse_broker_url)


@dataclass
class LinkStats:
    connects: int = 0
    connect_failures: int = 0
    published: int = 0
    acked: int = 0
    resent: int = 0
    parked: int = 0
    network_restarts: int = 0
    max_in_flight: int = 0  # never above the window: the proof of back-pressure
    fed_by_supervisor: int = 0  # published by the supervisor (new rows, free slots); the rest on a PUBACK, by paho's thread
    last_ack_ns: int = 0    # time.monotonic_ns() of the last PUBACK for an outbox message
    commands_ok: int = 0
    commands_rejected: int = 0


def gateway_state(gateway_id: str, state: str) -> bytes:
    """The retained ``state`` message: ``online`` at connect, ``offline`` at a clean stop and as the last will."""
    msg = events_pb2.GatewayState(gateway_id=gateway_id, state=state, version=__version__)
    msg.at.GetCurrentTime()
    return ob.to_json_bytes(msg)
