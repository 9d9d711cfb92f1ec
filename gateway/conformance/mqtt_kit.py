"""``egw conformance mqtt``: listen to one gateway's topics and judge them by docs/mqtt.md.

A subscriber with QoS 1 on ``egw/v1/<id>/#`` collects for a while, then every message is
judged: its topic is one the contract names, its payload matches the published schema,
the ids in it agree with the topic, it was published with QoS 1, the retain flag only
where the contract retains, ``egw-seq`` on lane messages (MQTT 5), and — given the
gateway's certificate — every signed payload verifies with the gateway role for that id.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.conformance.report import Report
from gateway.errors import ConfigError
from gateway.uplink.mqtt_config import parse_broker_url
from protos import dsse
from protos.pki_roles import Role, RoleError, require_role
from protos.schemas import schema_errors

__all__ = ["Observed", "TopicRule", "observe", "judge", "check_gateway"]

MANIFEST_TYPE = "application/vnd.egw.manifest.v1+json"
TREE_HEAD_TYPE = "application/vnd.egw.tree-head.v1+json"


@dataclass(frozen=True)
class TopicRule:
    """One row of docs/mqtt.md's topic table."""

    name: str
    pattern: re.Pattern[str]
    schema: str
    retained: bool
    lane: bool  # carries egw-seq under MQTT 5


TOPIC_RULES = (
    TopicRule("state", re.compile(r"^state$"), "mqtt-gateway-state", True, False),
    TopicRule("evidence/<id>", re.compile(r"^evidence/(?P<id>[^/]+)$"), "mqtt-evidence-state", False, True),
    TopicRule("results/rapidtest", re.compile(r"^results/rapidtest$"), "mqtt-rapidtest-result", False, True),
    TopicRule("devices/<id>/state", re.compile(r"^devices/(?P<id>[^/]+)/state$"), "mqtt-device-state", True, True),
    TopicRule("custody/sth", re.compile(r"^custody/sth$"), "mqtt-signed-tree-head", True, True),
    TopicRule("cmd/<name>/reply", re.compile(r"^cmd/[^/]+/reply$"), "mqtt-command-reply", False, False),
    TopicRule("cmd/<name>", re.compile(r"^cmd/[^/]+$"), "mqtt-signed-command", False, False),
)


@dataclass(frozen=True)
class Observed:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    seq: str | None


@dataclass
class _Judgement:
    """Failures per rule, so the report says how many messages broke it and shows the first."""

    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    checked: Counter[str] = field(default_factory=Counter)

    def check(self, rule: str, ok: bool, why: Callable[[], str]) -> None:
        self.checked[rule] += 1
        if not ok:
            self.failures[rule].append(why())


def _user_seq(message: mqtt.MQTTMessage) -> str | None:
    props = getattr(message, "properties", None)
    for key, value in getattr(props, "UserProperty", None) or []:
        if key == "egw-seq":
            return str(value)
    return None


def observe(url: str, gateway_id: str, seconds: float, *, ca_file: Path | None = None) -> tuple[list[Observed], bool]:
    """Subscribe (QoS 1, MQTT 5 when the broker has it) and collect for ``seconds``; return (messages, v5)."""
    broker = parse_broker_url(url)
    for v5 in (True, False):
        got = _collect(broker.host, broker.port, broker.username, broker.password, broker.tls, ca_file,
                       f"egw/v1/{gateway_id}/#", seconds, v5)
        if got is not None:
            return got, v5
    raise ConfigError(f"the broker at {broker.redacted()} accepted neither an MQTT 5 nor an MQTT 3.1.1 subscription",
                      "check the URL, the credentials and that this client may subscribe to egw/v1/<id>/#")


def _collect(host: str, port: int, user: str | None, password: str | None, tls: bool, ca_file: Path | None,
             topic: str, seconds: float, v5: bool) -> list[Observed] | None:
    seen: list[Observed] = []
    subscribed = threading.Event()
    refused = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"egw-conformance-{time.monotonic_ns()}",
                         protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
    if user:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set(ca_certs=str(ca_file) if ca_file else None, cert_reqs=ssl.CERT_REQUIRED)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            refused.set()
            return
        c.subscribe(topic, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = lambda _c, _u, m: seen.append(Observed(m.topic, bytes(m.payload), m.qos, bool(m.retain), _user_seq(m)))
    try:
        client.connect(host, port, 30)
    except OSError as exc:
        raise ConfigError(f"cannot reach the broker at {host}:{port}: {exc}", "check the URL and that the broker runs") from exc
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not (subscribed.is_set() or refused.is_set()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not subscribed.is_set():
            return None
        time.sleep(seconds)
        return list(seen)
    finally:
        client.disconnect()
        client.loop_stop()


def _rule_for(relative: str) -> tuple[TopicRule, re.Match[str]] | None:
    for rule in TOPIC_RULES:
        match = rule.pattern.match(relative)
        if match:
            return rule, match
    return None


def _device_topic_id(device_id: str) -> str:
    return re.sub(r"[/+#]", "_", device_id)


def judge(messages: list[Observed], gateway_id: str, *, v5: bool, certificate: x509.Certificate | None,
          trust: list[x509.Certificate] | None = None) -> Report:
    """Every rule of the contract over what was observed; see the module docstring."""
    report = Report(f"gateway {gateway_id} as published ({len(messages)} message(s), MQTT {'5' if v5 else '3.1.1'})")
    report.add("the gateway published something", bool(messages),
               "" if messages else "no message under egw/v1/<id>/ while listening: is the gateway connected, is the id right?")
    if not messages:
        return report
    key = _gateway_key(report, certificate, gateway_id, trust)
    j = _Judgement()
    last_seq: dict[str, int] = {}
    for msg in messages:
        _judge_one(j, msg, gateway_id, v5, key, last_seq)
    for rule in ("topic is one the contract names", "payload matches its published schema",
                 "ids in the payload agree with the topic", "published with QoS 1",
                 "retained only where the contract retains", "egw-seq on every lane message (MQTT 5)",
                 "egw-seq increases per topic (redeliveries aside)", "signed payloads verify with the gateway key"):
        failures = j.failures.get(rule, [])
        if not j.checked[rule]:
            report.skip(rule, "no message this rule applies to" if key is not None or "signed" not in rule
                        else "no gateway certificate given (--cert)")
        elif failures:
            report.add(rule, False, f"{len(failures)} of {j.checked[rule]} message(s); first: {failures[0]}")
        else:
            report.add(rule, True, f"{j.checked[rule]} message(s)")
    return report


def _gateway_key(report: Report, certificate: x509.Certificate | None, gateway_id: str,
                 trust: list[x509.Certificate] | None) -> ec.EllipticCurvePublicKey | None:
    if certificate is None:
        return None
    try:
        require_role(certificate, Role.GATEWAY, gateway_id)
        report.add("the certificate holds the gateway role for this id", True)
    except RoleError as exc:
        report.add("the certificate holds the gateway role for this id", False, str(exc))
    if trust:
        report.add("the certificate chains to the trust anchor", _issued_by_any(certificate, trust),
                   "" if _issued_by_any(certificate, trust) else "not issued by any --trust certificate")
    public = certificate.public_key()
    return public if isinstance(public, ec.EllipticCurvePublicKey) else None


def _issued_by_any(cert: x509.Certificate, anchors: list[x509.Certificate]) -> bool:
    for anchor in anchors:
        try:
            cert.verify_directly_issued_by(anchor)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _judge_one(j: _Judgement, msg: Observed, gateway_id: str, v5: bool, key: ec.EllipticCurvePublicKey | None,
               last_seq: dict[str, int]) -> None:
    relative = msg.topic.removeprefix(f"egw/v1/{gateway_id}/")
    found = _rule_for(relative)
    j.check("topic is one the contract names", found is not None, lambda: f"unknown topic {msg.topic}")
    if found is None:
        return
    rule, match = found
    if rule.name == "cmd/<name>":
        return  # the platform publishes commands; a gateway is not judged by them
    try:
        payload = json.loads(msg.payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = f"{msg.topic}: not JSON ({exc})"
        j.check("payload matches its published schema", False, lambda: reason)
        return
    errors = schema_errors(rule.schema, payload)
    j.check("payload matches its published schema", not errors, lambda: f"{msg.topic}: {errors[0]}")
    j.check("published with QoS 1", msg.qos == 1, lambda: f"{msg.topic} arrived with QoS {msg.qos}")
    j.check("retained only where the contract retains", rule.retained or not msg.retain,
            lambda: f"{msg.topic} is retained on the broker; the contract does not retain {rule.name}")
    _judge_ids(j, rule, match, payload, gateway_id, msg.topic)
    if v5 and rule.lane:
        _judge_seq(j, msg, last_seq)
    if key is not None and isinstance(payload, dict):
        _judge_signature(j, rule, payload, key, gateway_id, msg.topic)


def _judge_ids(j: _Judgement, rule: TopicRule, match: re.Match[str], payload: Any, gateway_id: str, topic: str) -> None:
    if not isinstance(payload, dict):
        return
    expected: tuple[str, str] | None = None
    if rule.name == "state":
        expected = ("gatewayId", gateway_id)
    elif rule.name == "evidence/<id>":
        expected = ("evidenceId", match["id"])
    elif rule.name == "devices/<id>/state":
        got = _device_topic_id(str(payload.get("deviceId", "")))
        j.check("ids in the payload agree with the topic", got == match["id"],
                lambda: f"{topic} carries deviceId {payload.get('deviceId')!r}")
        return
    if expected is not None:
        name, value = expected
        j.check("ids in the payload agree with the topic", payload.get(name) == value,
                lambda: f"{topic} carries {name} {payload.get(name)!r}, the topic says {value!r}")


def _judge_seq(j: _Judgement, msg: Observed, last_seq: dict[str, int]) -> None:
    ok = msg.seq is not None and msg.seq.isdigit()
    j.check("egw-seq on every lane message (MQTT 5)", ok, lambda: f"{msg.topic} has egw-seq {msg.seq!r}")
    if not ok or msg.retain:
        return  # a retained copy replays an older sequence number by design
    seq = int(msg.seq or 0)
    previous = last_seq.get(msg.topic)
    j.check("egw-seq increases per topic (redeliveries aside)", previous is None or seq >= previous,
            lambda: f"{msg.topic}: egw-seq {seq} after {previous}")
    last_seq[msg.topic] = max(seq, previous or 0)


def _judge_signature(j: _Judgement, rule: TopicRule, payload: dict[str, Any], key: ec.EllipticCurvePublicKey,
                     gateway_id: str, topic: str) -> None:
    if rule.name == "custody/sth":
        _verify_envelope(j, payload.get("envelope"), TREE_HEAD_TYPE, key, topic,
                         lambda body: body.get("gateway_id") == gateway_id
                         and str(body.get("tree_size")) == str(payload.get("treeSize"))
                         and body.get("root_hash") == payload.get("rootHash"))
    elif rule.name == "results/rapidtest":
        _verify_envelope(j, payload.get("signedResult"), MANIFEST_TYPE, key, topic,
                         lambda body: body.get("gateway_id") == gateway_id
                         and body.get("evidence_id") == payload.get("evidenceId"))


def _verify_envelope(j: _Judgement, raw: Any, payload_type: str, key: ec.EllipticCurvePublicKey, topic: str,
                     agrees: Callable[[dict[str, Any]], bool]) -> None:
    rule = "signed payloads verify with the gateway key"
    try:
        envelope = dsse.Envelope.from_json(raw)
        dsse.verify(envelope, key, payload_type)
        body = envelope.payload_json()
    except (dsse.EnvelopeError, ValueError, TypeError) as exc:
        reason = f"{topic}: {exc}"
        j.check(rule, False, lambda: reason)
        return
    j.check(rule, agrees(body), lambda: f"{topic}: the signed payload disagrees with the readable fields or names another gateway")


def check_gateway(url: str, gateway_id: str, seconds: float, *, certificate: x509.Certificate | None = None,
                  trust: list[x509.Certificate] | None = None, ca_file: Path | None = None) -> Report:
    messages, v5 = observe(url, gateway_id, seconds, ca_file=ca_file)
    return judge(messages, gateway_id, v5=v5, certificate=certificate, trust=trust)
