"""Errors raised by the gateway layer.

Every error carries a ``hint``: what the operator should do about it. The CLI
prints ``error: <message>`` and, on the next line, ``hint: <hint>``.

    GatewayError
    ├── ConfigError            bad command line, config or data directory
    ├── IdentityError          gateway key or certificate missing / unreadable
    ├── StoreError             the content-addressed store
    │   ├── StoreFullError     not enough free disk (checked before and during a copy)
    │   └── SourceError        the source file could not be read, vanished or changed
    ├── StateError             the SQLite state database
    │   └── TransitionError    an evidence state change the state machine forbids
    ├── NotFoundError          no such evidence id
    ├── DeviceError            a device could not be reached or failed mid-way (wraps driver errors)
    ├── TerminalError          a mobile terminal's pairing, certificate or request was refused
    ├── VerificationError      a signature, proof or digest does not hold
    └── SealingError           the platform's seal or time-stamp service refused or could not be reached
"""

from __future__ import annotations

__all__ = [
    "GatewayError",
    "ConfigError",
    "IdentityError",
    "StoreError",
    "StoreFullError",
    "SourceError",
    "StateError",
    "TransitionError",
    "NotFoundError",
    "DeviceError",
    "TerminalError",
    "VerificationError",
    "SealingError",
]


class GatewayError(Exception):
    """Base of every gateway error; ``hint`` says what to do next."""

    default_hint = "see the message above"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint or self.default_hint


class ConfigError(GatewayError):
    default_hint = "check the command line and configuration file"


class IdentityError(GatewayError):
    default_hint = "run `egw keys init` for this data directory (set EGW_KEY_PASSPHRASE if the key is encrypted)"


class StoreError(GatewayError):
    default_hint = "check the data directory's disk and permissions"


class StoreFullError(StoreError):
    default_hint = "free disk space in the data directory; the source was left untouched, re-run the import afterwards"


class SourceError(StoreError):
    default_hint = "check that the source is readable and not being written; nothing was stored, re-run once it is stable"


class StateError(GatewayError):
    default_hint = "check the data directory's state.db (disk, permissions); a re-run resumes where it stopped"


class TransitionError(StateError):
    default_hint = "this is a bug or a concurrent change; report it with the evidence id"


class NotFoundError(GatewayError):
    default_hint = "list known evidence with `egw status --json` or check the --data-dir"


class DeviceError(GatewayError):
    default_hint = "check the cable / URL and that the device is switched on; nothing it sent before the failure was lost"


class TerminalError(GatewayError):
    default_hint = "pair the terminal again from the station screen (or `egw terminal pair`); `egw terminal ls` lists paired ones"


class VerificationError(GatewayError):
    default_hint = "the material does not hold together; treat it as tampered until explained"


class SealingError(GatewayError):
    default_hint = ("check that the platform's trust services are reachable and the gateway is enrolled; "
                    "a document can be sealed provisionally with the gateway's own certificate meanwhile")
