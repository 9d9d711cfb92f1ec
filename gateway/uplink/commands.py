"""Signed platform commands: verify, refuse with a reason, or run and reply.

A command arrives on ``egw/v1/<gw>/cmd/<name>`` as ``SignedCommand`` JSON:
a DSSE envelope (payloadType ``application/vnd.egw.command.v1+json``) whose
payload is a ``Command`` in the proto3 JSON mapping. Checks, in order, and
the reason code each failure puts in the reply's ``error``::

    oversized        payload larger than MAX_COMMAND_BYTES
    malformed        not JSON / not a SignedCommand / payload not a Command
    unsigned         no envelope or no signature in it
    no-trust-anchor  this gateway has no platform certificate yet (not enrolled)
    wrong-role       the pinned platform certificate lacks the command-signer role (docs/trust.md)
    bad-signature    no signature verifies with the platform key (forged, altered)
    wrong-type       envelope payloadType is not the command type
    wrong-gateway    the command names another gateway (a copy sent elsewhere)
    name-mismatch    the topic's <name> is not the signed name
    not-yet-valid    issued_at is further in the future than the allowed clock skew
    expired          expires_at has passed (or no expiry was signed)
    too-long-lived   expires_at - issued_at exceeds MAX_LIFETIME_S
    replayed         this nonce was already used (nonces are kept in state.db)
    unknown-command  verified, but the gateway does not know this command

The signature is checked before any field of the payload is trusted. The
nonce is recorded in the same transaction that accepts the command, so a
replay is refused after a restart too.

Nonces and a stepped wall clock: expiry can only be judged by the wall clock
(the platform signs wall times), but forgetting a nonce must not depend on
the clock reading right. A nonce is kept until its command expired more than
``max_lifetime_s`` (a day) ago by the gateway's clock, so a jump ahead of up
to a day and back forgets nothing still valid; and the latest expiry among
forgotten nonces is kept (a row with the empty nonce, which no command may
carry) and every command expiring at or before it is refused as expired, so
even a jump of a month ahead and back cannot make a used command run again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format

from gateway import __version__
from gateway.errors import ConfigError, GatewayError, NotFoundError
from gateway.evidence import nonces
from gateway.evidence.state import TRANSITIONS, EvidenceState
from protos import dsse
from protos.egw.v1 import events_pb2
from protos.pki_roles import Role, RoleError, require_role

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

__all__ = [
    "COMMAND_TYPE", "MAX_COMMAND_BYTES", "MAX_LIFETIME_S", "CLOCK_SKEW_S", "COMMAND_NAMES",
    "CommandRejected", "VerifiedCommand", "CommandVerifier", "CommandHandler", "load_platform_key",
    "load_command_signer", "make_reply",
]

log = logging.getLogger("egw.mqtt.commands")

COMMAND_TYPE = "application/vnd.egw.command.v1+json"
MAX_COMMAND_BYTES = 16 * 1024
MAX_LIFETIME_S = 24 * 3600.0
CLOCK_SKEW_S = 300.0
COMMAND_NAMES = ("ping", "sync-time", "reupload", "status")


class CommandRejected(Exception):
    """A command that must not run; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VerifiedCommand:
    name: str
    args: dict[str, str]
    nonce: str
    issued_at: float
    expires_at: float
    gateway_id: str


PlatformKeySource = Path | str | bytes | x509.Certificate | ec.EllipticCurvePublicKey | None


def load_platform_key(source: PlatformKeySource) -> ec.EllipticCurvePublicKey | None:
    """The platform's public key from a PEM path/bytes (certificate or public key), a certificate, or a key."""
    if source is None:
        return None
    if isinstance(source, ec.EllipticCurvePublicKey):
        return source
    key: Any
    if isinstance(source, x509.Certificate):
        key = source.public_key()
    else:
        if isinstance(source, (str, Path)):
            try:
                data = Path(source).read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read the platform certificate {source}: {exc.strerror}",
                                  "enrol the gateway (`egw enroll`) or pass the platform certificate path") from exc
        else:
            data = source
        try:
            key = x509.load_pem_x509_certificate(data).public_key() if b"CERTIFICATE" in data else \
                serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise ConfigError(f"the platform certificate is not valid PEM: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError("the platform signing key is not an EC key", "the platform signs commands with ECDSA P-256")
    return key


CommandSigner = x509.Certificate | ec.EllipticCurvePublicKey | None


def load_command_signer(source: PlatformKeySource) -> CommandSigner:
    """Like ``load_platform_key``, but a certificate stays a certificate, so the verifier can check that it
    holds ``Role.COMMAND_SIGNER``. A bare public key is an operator's explicit pin and has no role to check."""
    if isinstance(source, (str, Path, bytes)):
        if isinstance(source, bytes):
            data = source
        else:
            try:
                data = Path(source).read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read the platform certificate {source}: {exc.strerror}",
                                  "enrol the gateway (`egw enroll`) or pass the platform certificate path") from exc
        if b"CERTIFICATE" in data:
            try:
                return x509.load_pem_x509_certificate(data)
            except ValueError as exc:
                raise ConfigError(f"the platform certificate is not valid PEM: {exc}") from exc
        return load_platform_key(data)
    if isinstance(source, x509.Certificate):
        return source
    return load_platform_key(source)


def _ts_seconds(value: Timestamp) -> float:
    return float(value.seconds) + value.nanos / 1e9


class CommandVerifier:
    """Decides whether a signed command may run. Pure except for the nonce table."""

    def __init__(self, gateway_id: str, platform_key: CommandSigner, *,
                 clock: Callable[[], float] = time.time, max_lifetime_s: float = MAX_LIFETIME_S,
                 skew_s: float = CLOCK_SKEW_S) -> None:
        self.gateway_id = gateway_id
        self.wrong_role: str | None = None
        if isinstance(platform_key, x509.Certificate):
            try:  # a platform certificate that may not sign commands (the TLS one, a receipt-only signer) never will
                require_role(platform_key, Role.COMMAND_SIGNER)
            except RoleError as exc:
                self.wrong_role = str(exc)
            platform_key = load_platform_key(platform_key)
        self.platform_key = platform_key
        self.clock = clock
        self.max_lifetime_s = max_lifetime_s
        self.skew_s = skew_s

    def parse(self, payload: bytes) -> tuple[events_pb2.Command, dsse.Envelope | None]:
        """Structure only; returns the (unverified) command so a rejection can still name its nonce."""
        if len(payload) > MAX_COMMAND_BYTES:
            raise CommandRejected("oversized", f"command payload is {len(payload)} bytes, the limit is {MAX_COMMAND_BYTES}")
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandRejected("malformed", f"command payload is not JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise CommandRejected("malformed", "command payload is not a JSON object")
        if "envelope" not in doc or not doc.get("envelope"):
            raise CommandRejected("unsigned", "command carries no DSSE envelope")
        raw_env = doc["envelope"]
        if isinstance(raw_env, dict) and not raw_env.get("signatures"):
            raise CommandRejected("unsigned", "the command envelope carries no signature")
        try:
            envelope = dsse.Envelope.from_json(raw_env)
        except dsse.EnvelopeError as exc:
            raise CommandRejected("malformed", str(exc)) from exc
        command = events_pb2.Command()
        try:
            json_format.Parse(envelope.payload, command)
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            raise CommandRejected("malformed", f"envelope payload is not a Command: {exc}") from exc
        return command, envelope

    def verify(self, db: sqlite3.Connection, topic_name: str, payload: bytes) -> VerifiedCommand:
        """Run every check; on success record the nonce inside the caller's transaction."""
        command, envelope = self.parse(payload)
        assert envelope is not None
        if self.wrong_role is not None:
            raise CommandRejected("wrong-role", f"the pinned platform certificate is refused: {self.wrong_role}")
        if self.platform_key is None:
            raise CommandRejected("no-trust-anchor", "this gateway has no platform certificate; enrol it first")
        try:
            dsse.verify(envelope, self.platform_key)
        except dsse.EnvelopeError as exc:
            raise CommandRejected("bad-signature", "no signature verifies with the platform key (forged or altered)") from exc
        if envelope.payload_type != COMMAND_TYPE:
            raise CommandRejected("wrong-type", f"payloadType {envelope.payload_type!r} is not {COMMAND_TYPE!r}")
        if command.gateway_id != self.gateway_id:
            raise CommandRejected("wrong-gateway", f"command is for gateway {command.gateway_id!r}, this is {self.gateway_id!r}")
        if command.name != topic_name:
            raise CommandRejected("name-mismatch", f"topic says {topic_name!r} but the signed command is {command.name!r}")
        if not command.nonce or len(command.nonce) > 128:
            raise CommandRejected("malformed", "command nonce is empty or longer than 128 characters")
        now = self.clock()
        issued = _ts_seconds(command.issued_at)
        expires = _ts_seconds(command.expires_at)
        if not command.HasField("expires_at"):
            raise CommandRejected("expired", "command has no expiry; the platform must sign one")
        if issued > now + self.skew_s:
            raise CommandRejected("not-yet-valid", f"command issued {issued - now:.0f} s in the future; check both clocks")
        if expires <= now:
            raise CommandRejected("expired", f"command expired {now - expires:.1f} s ago")
        if expires - issued > self.max_lifetime_s:
            raise CommandRejected("too-long-lived", f"command valid for {expires - issued:.0f} s, more than {self.max_lifetime_s:.0f} s")
        forgotten = nonces.forgotten_up_to(db)
        if forgotten is not None and expires <= forgotten:
            raise CommandRejected("expired", "command expired before the newest nonce this gateway has forgotten "
                                  "(its clock was once far ahead); the platform must sign a new one")
        self._forget_old_nonces(db, now)
        try:
            nonces.use_nonce(db, command.nonce, command.name, expires, now)
        except nonces.NonceReplayed as exc:
            raise CommandRejected("replayed", f"nonce {command.nonce!r} was already used") from exc
        return VerifiedCommand(command.name, dict(command.args), command.nonce, issued, expires, command.gateway_id)

    def _forget_old_nonces(self, db: sqlite3.Connection, now: float) -> None:
        """Drop nonces of commands expired over a day ago, remembering the latest expiry dropped (see the module
        docstring: a clock stepped far ahead must not make a used command acceptable again)."""
        nonces.forget_expired_before(db, now - self.skew_s - self.max_lifetime_s, now)


def make_reply(name: str, nonce: str, ok: bool, *, error: str = "", result: dict[str, str] | None = None) -> events_pb2.CommandReply:
    reply = events_pb2.CommandReply(name=name, nonce=nonce, ok=ok, error=error, result=result or {})
    reply.at.GetCurrentTime()
    return reply


SyncTimeHook = Callable[[dict[str, str]], dict[str, str] | None]


@dataclass
class CommandHandler:
    """Runs verified commands against the gateway's state.

    ``sync_time_hooks`` are called for ``sync-time`` (the device supervisor
    registers one that re-syncs docked recorders); ``status_extra`` adds
    fields to the ``status`` reply (e.g. the link's own counters);
    ``evidence_service`` (the running service's, with ``attach_to_service``
    applied) is used for ``reupload`` when given.
    """

    data_dir: Path
    gateway_id: str
    sync_time_hooks: list[SyncTimeHook] = field(default_factory=list)
    status_extra: Callable[[], dict[str, str]] | None = None
    evidence_service: Any = None  # the service's EvidenceService, when the link runs inside `egw run`
    identity: Any = None          # the gateway identity (loaded from data_dir when not given)

    def run(self, command: VerifiedCommand) -> events_pb2.CommandReply:
        handler = {
            "ping": self._ping, "sync-time": self._sync_time, "reupload": self._reupload, "status": self._status,
        }.get(command.name)
        if handler is None:
            return make_reply(command.name, command.nonce, False,
                              error=f"unknown-command: {command.name!r}; known: {', '.join(COMMAND_NAMES)}")
        try:
            return handler(command)
        except CommandRejected as exc:
            return make_reply(command.name, command.nonce, False, error=str(exc))
        except GatewayError as exc:
            log.warning("command %s (nonce %s) failed: %s", command.name, command.nonce, exc)
            return make_reply(command.name, command.nonce, False, error=f"failed: {exc}")

    def _ping(self, command: VerifiedCommand) -> events_pb2.CommandReply:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return make_reply(command.name, command.nonce, True,
                          result={"pong": "true", "gateway_id": self.gateway_id, "time": now, "version": __version__})

    def _sync_time(self, command: VerifiedCommand) -> events_pb2.CommandReply:
        result: dict[str, str] = {"hooks": str(len(self.sync_time_hooks))}
        for hook in self.sync_time_hooks:
            result.update({k: str(v) for k, v in (hook(dict(command.args)) or {}).items()})
        if not self.sync_time_hooks:
            result["note"] = "no device supervisor attached; nothing to re-sync"
        return make_reply(command.name, command.nonce, True, result=result)

    def _reupload(self, command: VerifiedCommand) -> events_pb2.CommandReply:
        evidence_id = command.args.get("evidence_id") or command.args.get("id") or ""
        if not evidence_id:
            raise CommandRejected("bad-args", "reupload needs evidence_id=<id>")
        details = {"by": "platform command", "nonce": command.nonce}
        if self.evidence_service is not None:
            from_state = self._requeue_with_service(self.evidence_service, evidence_id, details)
        else:
            from_state = self._requeue_standalone(evidence_id, details)
        if from_state == EvidenceState.QUEUED:
            return make_reply(command.name, command.nonce, True,
                              result={"evidence_id": evidence_id, "state": EvidenceState.QUEUED.value, "note": "already queued"})
        return make_reply(command.name, command.nonce, True,
                          result={"evidence_id": evidence_id, "state": EvidenceState.QUEUED.value, "from_state": from_state})

    @staticmethod
    def _check_requeue(evidence_id: str, get: Callable[[str], Any]) -> str:
        try:
            row = get(evidence_id)
        except NotFoundError as exc:
            raise CommandRejected("unknown-evidence", f"no evidence {evidence_id!r} on this gateway") from exc
        if row.state != EvidenceState.QUEUED and EvidenceState.QUEUED not in TRANSITIONS.get(row.state, frozenset()):
            raise CommandRejected(
                "cannot-reupload",
                f"evidence {evidence_id} is {row.state!r}; only ingested or uploading items can go back to the queue",
            )
        return str(row.state)

    def _requeue_with_service(self, service: Any, evidence_id: str, details: dict[str, Any]) -> str:
        """The running service's own EvidenceService (its hooks publish the change)."""
        from_state = self._check_requeue(evidence_id, service.state.get)
        if from_state != EvidenceState.QUEUED:
            service.transition(evidence_id, EvidenceState.QUEUED, custody_event="reupload-requested",
                               details={**details, "from_state": from_state})
        return from_state

    def _requeue_standalone(self, evidence_id: str, details: dict[str, Any]) -> str:
        """No service handed in: state change + custody event + evidence message in one transaction.

        Deliberately not a new ``EvidenceService``: its constructor recovers the
        blob store (deletes ``*.part`` files), which would break an ingest that
        another thread or process has in progress.
        """
        from gateway.evidence.custody import CustodyLog
        from gateway.evidence.identity import load_identity
        from gateway.evidence.state import State
        from gateway.uplink.outbox import evidence_hook

        identity = self.identity or load_identity(self.data_dir)
        publish = evidence_hook(identity.gateway_id)
        with State(self.data_dir) as state:
            from_state = self._check_requeue(evidence_id, state.get)
            if from_state == EvidenceState.QUEUED:
                return from_state
            with state.transaction() as db:
                state.transition(evidence_id, EvidenceState.QUEUED)
                event_details = {**details, "from_state": from_state}
                CustodyLog(state, identity).append(db, "reupload-requested", evidence_id, event_details)
                publish(db, state.get(evidence_id), {"event": "reupload-requested", **event_details})
        return from_state

    def _status(self, command: VerifiedCommand) -> events_pb2.CommandReply:
        from gateway.evidence.state import State
        from gateway.uplink.outbox import usage

        with State(self.data_dir) as state:
            counts = state.counts_by_state()
            used = usage(state.db)
        result = {f"evidence_{k}": str(v) for k, v in counts.items()}
        result.update({"outbox_count": str(used.count), "outbox_bytes": str(used.bytes), "outbox_parked": str(used.parked),
                       "outbox_full": str(used.full).lower(), "gateway_id": self.gateway_id, "version": __version__})
        if self.status_extra is not None:
            result.update(self.status_extra())
        return make_reply(command.name, command.nonce, True, result=result)
