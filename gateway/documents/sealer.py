"""The seam for the agency seal: a sealer takes the rendered PDF/A-3b's path and returns the sealed PDF's path.

Why a seam and not a call: sealing (PAdES with the agency's certificate, an RFC 3161 time-stamp from the
platform) is its own component with its own keys. ``egw record`` renders, then asks ``find_sealer()``; with a
sealer it stores the sealed file, without one it stores the unsealed PDF/A-3b and says so (on stderr, in
``--json`` as ``"sealed": false`` and in the evidence manifest's ``extra.document.sealed``): a document is never
presented as sealed when it is not.

A sealer is named by ``EGW_DOCUMENT_SEALER=package.module:function`` (the client's setting when the command
runs inside ``egw run``), or registered in-process with ``register_sealer`` (tests, an embedding service).
The function gets the unsealed path and must return the path of a new file next to it; it must not change its
input, and raises a ``GatewayError`` when it cannot seal (the command then fails: no unsealed document is
stored in place of one the operator asked to seal). ``egw record`` checks both (gateway/commands/record.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from gateway.errors import ConfigError

__all__ = ["Sealer", "SEALER_SETTING", "find_sealer", "register_sealer"]

Sealer = Callable[[Path], Path]
SEALER_SETTING = "EGW_DOCUMENT_SEALER"
_registered: list[Sealer] = []


def register_sealer(sealer: Sealer | None) -> None:
    """Use ``sealer`` for documents rendered in this process (``None``: forget the one registered)."""
    _registered.clear()
    if sealer is not None:
        _registered.append(sealer)


def find_sealer(setting: str | None) -> Sealer | None:
    """The sealer registered, else the one ``setting`` (the value of EGW_DOCUMENT_SEALER) names, else None."""
    if _registered:
        return _registered[0]
    spec = (setting or "").strip()
    if not spec:
        return None
    module_name, sep, attribute = spec.partition(":")
    try:
        if not sep:
            raise ValueError("no ':'")
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{SEALER_SETTING}={spec!r} names no sealer ({exc})",
                          f"set it to package.module:function, or unset {SEALER_SETTING} to store documents unsealed") from exc
    if not callable(found):
        raise ConfigError(f"{SEALER_SETTING}={spec!r} is not a function", "name the sealing function itself")
    sealer: Sealer = found
    return sealer
