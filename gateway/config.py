"""``gateway.toml``: one file configures a station.

Validation collects *every* problem before failing, each naming the key and
the fix, because an operator editing a config at a station wants one round
trip, not ten. See ``gateway.example.toml`` for a documented example.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

__all__ = ["GatewayConfig", "DeviceConfig", "load_config", "parse_config", "DEVICE_KINDS", "RELEASE_POLICIES"]

DEVICE_KINDS = ("bodycam", "rapidtest", "fingerprint", "signpad")
RELEASE_POLICIES = ("receipt", "ingest", "never")


@dataclass(frozen=True)
class DeviceConfig:
    kind: str
    name: str
    port: str | None = None  # serial: a device path or a byte-stream URL (socket://…, rfc2217://…)
    usb: str | None = None  # VID:PID (serial adapters via serial.tools.list_ports, or USB devices)
    usbip: str | None = None  # HOST:PORT of a USB/IP server to poll (a usbip:// URL is stored in this form)
    password: str = "000000"
    volumes: str | None = None  # mass-storage mount template, e.g. /run/egw/volumes/{serial}
    baud: int = 9600
    options: dict[str, Any] = field(default_factory=dict)
    usbip_busid: str | None = None  # the bus id when usbip named one device (usbip://HOST:PORT/BUSID)

    @property
    def usbip_url(self) -> str | None:
        """The ``usbip://`` URL the configuration named (server, and bus id if one was given)."""
        if not self.usbip:
            return None
        return f"usbip://{self.usbip}" + (f"/{self.usbip_busid}" if self.usbip_busid else "")


@dataclass(frozen=True)
class GatewayConfig:
    data_dir: Path
    gateway_id: str | None = None
    platform_address: str | None = None
    platform_insecure: bool = False
    trust_services: str | None = None
    bandwidth_bytes_per_s: int = 0
    parallel_uploads: int = 2
    mqtt_url: str | None = None
    mqtt_allow_plaintext_password: bool = False  # mqtt://user:pass@ to a host that is not loopback
    release: str = "receipt"
    parallel_copies: int = 2
    reserve_mb: int = 256
    sm3: bool = False
    screen_listen: str | None = "127.0.0.1:8080"
    metrics_listen: str | None = "127.0.0.1:9108"
    terminal_listen: str | None = None  # the mutual-TLS API for mobile terminals (off unless configured)
    terminal_pairing_listen: str | None = None  # server-TLS only: where terminals pair
    terminal_names: tuple[str, ...] = ()  # extra DNS names / IPs in the station's terminal TLS certificate
    terminal_announce: bool = True  # DNS-SD _egw._tcp on the API's interface
    hostnames: tuple[str, ...] = ()  # names the screen and /metrics answer to besides loopback and the bound address
    log_format: str = "auto"  # auto | json | human
    log_level: str = "info"  # debug | info | warning | error
    inspector_id: str | None = None
    site: str | None = None
    unit: str | None = None
    devices: tuple[DeviceConfig, ...] = ()
    source: Path | None = None


LOG_LEVELS = ("debug", "info", "warning", "error")

# key -> (expected type(s), description of the fix)
_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "": {
        "gateway_id": ((str,), "a short name such as \"gw-station-7\""),
        "data_dir": ((str,), "an absolute directory path such as \"/var/lib/egw\""),
        "log_format": ((str,), "\"auto\", \"json\" or \"human\""),
        "log_level": ((str,), "\"debug\", \"info\", \"warning\" or \"error\""),
        "hostnames": ((list,), "a list of names the station screen and /metrics answer to, such as [\"station7.local\"]"),
    },
    "platform": {
        "address": ((str,), "HOST:PORT of the platform's EvidenceIngest service"),
        "insecure": ((bool,), "true only for local experiments without TLS"),
        "bandwidth_bytes_per_s": ((int,), "a whole number of bytes per second, 0 for no cap"),
        "parallel_uploads": ((int,), "a whole number from 1 to 16"),
        "trust_services": ((str,), "https://HOST:PORT of the platform's trust services (agency seal, time-stamps)"),
    },
    "mqtt": {"url": ((str,), "mqtt://HOST:PORT or mqtts://HOST:PORT"),
             "allow_plaintext_password": ((bool,), "true only on a trusted network: mqtt://user:pass@ sends the password in clear")},
    "release": {"policy": ((str,), "\"receipt\" (default), \"ingest\" or \"never\"")},
    "ingest": {
        "parallel_copies": ((int,), "a whole number from 1 to 8"),
        "reserve_mb": ((int,), "free disk (MB) kept for the database and logs"),
        "sm3": ((bool,), "true to also compute SM3 digests"),
    },
    "screen": {"listen": ((str,), "HOST:PORT for the station screen, or \"\" to turn it off")},
    "metrics": {"listen": ((str,), "HOST:PORT for Prometheus metrics, or \"\" to turn them off")},
    "terminal": {
        "listen": ((str,), "HOST:PORT of the mutual-TLS API for mobile terminals, or \"\" to turn it off"),
        "pairing_listen": ((str,), "HOST:PORT where terminals pair (server TLS only)"),
        "names": ((str,), "comma-separated extra DNS names or IP addresses terminals reach the station by"),
        "announce": ((bool,), "true to announce the station by DNS-SD (_egw._tcp), false not to"),
    },
    "defaults": {
        "inspector_id": ((str,), "the inspector id recorded with results"),
        "site": ((str,), "the site or location name"),
        "unit": ((str,), "the unit code"),
    },
}
_DEVICE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "kind": ((str,), "one of " + ", ".join(DEVICE_KINDS)),
    "name": ((str,), "a unique name for the bay or device"),
    "port": ((str,), "a serial device path or URL such as /dev/ttyUSB0 or socket://127.0.0.1:7001"),
    "usb": ((str,), "VID:PID in hex, such as \"0403:6001\" (or usb://0403:6001)"),
    "usbip": ((str,), "HOST:PORT of a USB/IP server, or the usbip://HOST:PORT[/BUSID] URL a simulator prints"),
    "password": ((str,), "the 6-character device password"),
    "volumes": ((str,), "a directory template containing {serial}"),
    "baud": ((int,), "the serial baud rate, e.g. 9600"),
    "options": ((dict,), "a table of device-specific options"),
}


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(sorted(known))


def _check_table(where: str, table: dict[str, Any], schema: dict[str, tuple[tuple[type, ...], str]], problems: list[str]) -> None:
    for key, value in table.items():
        if key not in schema:
            problems.append(f"{where}{key}: unknown key; {_suggest(key, list(schema))}")
            continue
        types, fix = schema[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            problems.append(f"{where}{key}: expected {fix}, got {value!r}")


def _host_port(where: str, value: str | None, problems: list[str]) -> None:
    if not value:
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(f"{where}: {value!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")


def parse_config(raw: dict[str, Any], source: Path | None = None, data_dir_override: Path | None = None) -> GatewayConfig:
    problems: list[str] = []
    top_level = dict(_SCHEMA[""])
    sections = {k: v for k, v in raw.items() if isinstance(v, dict)}
    scalars = {k: v for k, v in raw.items() if not isinstance(v, (dict, list))}
    _check_table("", scalars, top_level, problems)
    for name, table in sections.items():
        if name not in _SCHEMA or name == "":
            problems.append(f"[{name}]: unknown section; {_suggest(name, [s for s in _SCHEMA if s] + ['devices'])}")
            continue
        _check_table(f"{name}.", table, _SCHEMA[name], problems)
    lists = {k: v for k, v in raw.items() if isinstance(v, list)}
    for name in lists:
        if name not in ("devices", "hostnames"):
            problems.append(f"{name}: unexpected list; only hostnames and [[devices]] entries are lists")

    def get(section: str, key: str, default: Any) -> Any:
        value = (raw if not section else raw.get(section, {})).get(key, default)
        return default if value is None else value

    devices: list[DeviceConfig] = []
    names: set[str] = set()
    for i, entry in enumerate(raw.get("devices", []) if isinstance(raw.get("devices"), list) else []):
        where = f"devices[{i}]."
        if not isinstance(entry, dict):
            problems.append(f"devices[{i}]: expected a [[devices]] table")
            continue
        _check_table(where, entry, _DEVICE_KEYS, problems)
        kind = entry.get("kind")
        if kind not in DEVICE_KINDS:
            problems.append(f"{where}kind: {kind!r} is not one of {', '.join(DEVICE_KINDS)}")
            continue
        name = str(entry.get("name") or f"{kind}-{i}")
        if name in names:
            problems.append(f"{where}name: {name!r} is used twice; give each device a unique name")
        names.add(name)
        endpoints = [k for k in ("port", "usb", "usbip") if entry.get(k)]
        if not endpoints:
            problems.append(f"devices[{i}]: a {kind} needs one of port, usb or usbip")
        if kind == "bodycam" and entry.get("port"):
            problems.append(f"{where}port: body cameras are USB devices; use usb = \"VID:PID\" or usbip = \"HOST:PORT\"")
        if kind in ("rapidtest", "fingerprint") and entry.get("usbip"):
            problems.append(f"{where}usbip: a {kind} is a serial device; use port = \"/dev/ttyUSB0\" (or socket://…) or usb = \"VID:PID\"")
        endpoint_values = _device_endpoints(where, entry, problems)
        volumes = entry.get("volumes")
        if kind == "bodycam" and isinstance(volumes, str) and "{serial}" not in volumes:
            problems.append(f"{where}volumes: the template must contain {{serial}} so each recorder finds its own volume")
        password = entry.get("password", "000000")
        if kind == "bodycam" and isinstance(password, str) and len(password) != 6:
            problems.append(f"{where}password: recorder passwords are 6 characters")
        known = {k: v for k, v in entry.items() if k in _DEVICE_KEYS and k not in ("kind", "name")} | endpoint_values
        try:
            devices.append(DeviceConfig(kind=kind, name=name, **known))
        except TypeError as exc:
            problems.append(f"{where}: {exc}")

    release = get("release", "policy", "receipt")
    if release not in RELEASE_POLICIES:
        problems.append(f"release.policy: {release!r} is not one of {', '.join(RELEASE_POLICIES)}")
    for section, key in (("platform", "address"), ("screen", "listen"), ("metrics", "listen"), ("terminal", "listen"),
                         ("terminal", "pairing_listen")):
        value = get(section, key, None)
        if isinstance(value, str):
            _host_port(f"{section}.{key}", value, problems)
    trust_services = get("platform", "trust_services", None)
    if isinstance(trust_services, str) and not trust_services.startswith("https://"):
        problems.append(f"platform.trust_services: {trust_services!r} must be https://HOST:PORT")
    mqtt_url = get("mqtt", "url", None)
    if isinstance(mqtt_url, str) and not mqtt_url.startswith(("mqtt://", "mqtts://")):
        problems.append(f"mqtt.url: {mqtt_url!r} must start with mqtt:// or mqtts://")
    parallel = get("platform", "parallel_uploads", 2)
    if isinstance(parallel, int) and not 1 <= parallel <= 16:
        problems.append("platform.parallel_uploads: must be from 1 to 16")
    copies = get("ingest", "parallel_copies", 2)
    if isinstance(copies, int) and not 1 <= copies <= 8:
        problems.append("ingest.parallel_copies: must be from 1 to 8")
    log_format = get("", "log_format", "auto")
    if log_format not in ("auto", "json", "human"):
        problems.append(f"log_format: {log_format!r} is not auto, json or human")
    log_level = get("", "log_level", "info")
    if log_level not in LOG_LEVELS:
        problems.append(f"log_level: {log_level!r} is not {', '.join(LOG_LEVELS)}")
    hostnames = get("", "hostnames", [])
    if isinstance(hostnames, list) and not all(isinstance(n, str) and n.strip() for n in hostnames):
        problems.append("hostnames: every entry must be a non-empty name, such as \"station7.local\"")
    data_dir = data_dir_override or (Path(raw["data_dir"]) if isinstance(raw.get("data_dir"), str) else None)
    if data_dir is None:
        problems.append("data_dir: missing; set data_dir = \"/var/lib/egw\" (or pass --data-dir)")
    if problems:
        where = f" in {source}" if source else ""
        raise ConfigError(
            f"{len(problems)} problem(s){where}:\n  " + "\n  ".join(problems),
            "fix each key named above; gateway.example.toml documents every setting",
        )
    assert data_dir is not None
    return GatewayConfig(
        data_dir=data_dir,
        gateway_id=get("", "gateway_id", None),
        platform_address=get("platform", "address", None),
        platform_insecure=get("platform", "insecure", False),
        trust_services=trust_services or None,
        bandwidth_bytes_per_s=get("platform", "bandwidth_bytes_per_s", 0),
        parallel_uploads=parallel,
        mqtt_url=mqtt_url,
        mqtt_allow_plaintext_password=get("mqtt", "allow_plaintext_password", False),
        release=release,
        parallel_copies=copies,
        reserve_mb=get("ingest", "reserve_mb", 256),
        sm3=get("ingest", "sm3", False),
        screen_listen=get("screen", "listen", "127.0.0.1:8080") or None,
        metrics_listen=get("metrics", "listen", "127.0.0.1:9108") or None,
        terminal_listen=get("terminal", "listen", None) or None,
        terminal_pairing_listen=get("terminal", "pairing_listen", None) or None,
        terminal_announce=get("terminal", "announce", True),
        terminal_names=tuple(n.strip() for n in str(get("terminal", "names", "")).split(",") if n.strip()),
        hostnames=tuple(hostnames) if isinstance(hostnames, list) else (),
        log_format=log_format,
        log_level=log_level,
        inspector_id=get("defaults", "inspector_id", None),
        site=get("defaults", "site", None),
        unit=get("defaults", "unit", None),
        devices=tuple(devices),
        source=source,
    )


def _device_endpoints(where: str, entry: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Check ``port``, ``usb`` and ``usbip`` with the transports' own URL parser; the values to store.

    Each key takes what the simulators print verbatim (a pty path, ``socket://…``,
    ``usbip://HOST:PORT[/BUSID]``) as well as the older short forms
    (``usbip = "HOST:PORT"``, ``usb = "VID:PID"``), and stores the short form the
    runtime has always read, so a deployed configuration keeps meaning the same."""
    port, usb, usbip = entry.get("port"), entry.get("usb"), entry.get("usbip")
    if isinstance(port, str) and port:
        _check_port(where, port, problems)
    values: dict[str, Any] = {}
    if isinstance(usbip, str) and usbip:
        values |= _usbip_values(where, usbip, problems)
    if isinstance(usb, str):
        values |= _usb_values(where, usb, problems)
    return values


def _check_port(where: str, port: str, problems: list[str]) -> None:
    from firmware_bridge.transports import LoopUrl, Rfc2217Url, SerialPath, SocketUrl, parse_url

    try:
        if not isinstance(parse_url(port), (SerialPath, SocketUrl, Rfc2217Url, LoopUrl)):
            problems.append(f"{where}port: {port!r} is a USB URL; put it in usb = or usbip =")
    except ValueError as exc:
        problems.append(f"{where}port: {exc}")


def _usbip_values(where: str, usbip: str, problems: list[str]) -> dict[str, Any]:
    """``HOST:PORT`` (deployed form) or ``usbip://HOST[:PORT][/BUSID]`` -> ``usbip`` = HOST:PORT and the bus id."""
    from firmware_bridge.transports import UsbIpUrl, parse_url

    is_url = "://" in usbip
    try:
        target = parse_url(usbip if is_url else f"usbip://{usbip}")
    except ValueError:
        target = None
    if not isinstance(target, UsbIpUrl) or target.serial or (not is_url and target.busid):
        problems.append(f"{where}usbip: {usbip!r} is not HOST:PORT or usbip://HOST:PORT[/BUSID] "
                        "(e.g. 127.0.0.1:3240 or usbip://127.0.0.1:3240/1-1)")
        return {}
    if not is_url and ":" not in usbip.rpartition("]")[2]:
        problems.append(f"{where}usbip: {usbip!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
        return {}
    return {"usbip": target.server, "usbip_busid": target.busid}


def _usb_values(where: str, usb: str, problems: list[str]) -> dict[str, Any]:
    """``VID:PID`` or ``usb://VID:PID`` -> ``usb`` = VID:PID."""
    from firmware_bridge.transports import UsbUrl, parse_url

    try:
        target = parse_url(usb) if usb.startswith("usb://") else None
    except ValueError:
        target = None
    if isinstance(target, UsbUrl) and target.serial is None:
        return {"usb": f"{target.vendor_id:04x}:{target.product_id:04x}"}
    if not _is_vid_pid(usb):
        problems.append(f"{where}usb: {usb!r} is not VID:PID in hex (e.g. \"1209:0001\")")
    return {}


def _is_vid_pid(value: str) -> bool:
    vid, sep, pid = value.partition(":")
    try:
        return bool(sep) and len(vid) == 4 and len(pid) == 4 and int(vid, 16) >= 0 and int(pid, 16) >= 0
    except ValueError:
        return False


def load_config(path: Path, data_dir_override: Path | None = None) -> GatewayConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist", "pass -c with the path of your gateway.toml") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", "fix the syntax at the line named above") from exc
    return parse_config(raw, source=path, data_dir_override=data_dir_override)
