"""The MQTT link's commands: a signed command on ``cmd/<name>`` is verified (signature, expiry, nonce
not used before: the nonce is committed with ``synchronous=FULL``), run, and answered on its reply
topic (MQTT 5: the response topic and correlation data it asked for).

Verifying and running are ``gateway.uplink.commands``; this is the link's side of it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.uplink import outbox as ob
from gateway.uplink.commands import CommandRejected, make_reply
from gateway.uplink.mqtt_core import LinkCore

__all__ = ["CommandReplies"]

log = logging.getLogger("egw.mqtt")


class CommandReplies(LinkCore):
    """The command half of ``MqttLink``."""

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        assert self._client is not None and self._state is not None
        topic = message.topic
        prefix = self.root + "cmd/"
        if not topic.startswith(prefix) or "/" in topic[len(prefix):]:
            log.warning("MQTT: ignoring a message on unexpected topic %r (%d bytes)", topic[:200], len(message.payload))
            return
        name = topic[len(prefix):]
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        reply_topic = f"{prefix}{name}/reply"
        if response_topic:
            try:
                ob.check_topic(self.root, response_topic)
                reply_topic = response_topic
            except ob.OutboxError:
                log.warning("command %s asked for a reply on %r, outside this gateway's root; replying on %s",
                            name, response_topic, reply_topic)
        nonce = ""
        try:
            try:
                command, _ = self.verifier.parse(bytes(message.payload))
                nonce = command.nonce[:128]
            except CommandRejected:
                pass
            with self._state.synchronous_full(), self._state.transaction() as db:  # a used nonce must survive a power cut
                verified = self.verifier.verify(db, name, bytes(message.payload))
        except CommandRejected as exc:
            self.stats.commands_rejected += 1
            log.warning("MQTT: rejected command %r (nonce %r): %s", name, nonce, exc)
            reply = make_reply(name, nonce, False, error=str(exc))
        else:
            log.info("MQTT: running command %s (nonce %s)", verified.name, verified.nonce)
            reply = self.commands.run(verified)
            if reply.ok:
                self.stats.commands_ok += 1
            else:
                self.stats.commands_rejected += 1
        properties = None
        if self._protocol == MQTTProtocolVersion.MQTTv5 and correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        self._client.publish(reply_topic, ob.to_json_bytes(reply), qos=1, properties=properties)

    def _status_extra(self) -> dict[str, str]:
        return {f"link_{k}": str(v) for k, v in asdict(self.stats).items()}
