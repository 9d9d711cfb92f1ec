"""The MQTT link's connection and session: connect, reconnect with backoff and jitter, TLS, the MQTT 5
to 3.1.1 fallback, paho's callbacks and network thread, tear-down and a clean stop.

Runs on the link's supervisor thread (see ``gateway.uplink.mqtt_link`` for the threads and the
delivery rules); paho's callbacks only queue events for it.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.errors import ConfigError
from gateway.evidence import identity as identity_mod
from gateway.uplink import outbox as ob
from gateway.uplink.mqtt_client import FastAckClient
from gateway.uplink.mqtt_config import gateway_state
from gateway.uplink.mqtt_core import LinkCore

__all__ = ["LinkSession"]

log = logging.getLogger("egw.mqtt")


class LinkSession(LinkCore):
    """The connection half of ``MqttLink``."""

    # ---- callbacks (paho's network thread) -----------------------------------
    def _push(self, *event: Any) -> None:
        self._events.append(event)
        self._wake.set()

    def _bind(self, client: mqtt.Client, gen: int) -> None:
        def on_connect(_c: Any, _u: Any, flags: Any, reason_code: Any, properties: Any) -> None:
            self._push("connack", gen, reason_code)

        def on_disconnect(_c: Any, _u: Any, flags: Any, reason_code: Any, properties: Any) -> None:
            self._push("disconnect", gen, reason_code)

        def on_publish(_c: Any, _u: Any, mid: int, reason_code: Any, properties: Any) -> None:
            self._on_puback(client, gen, mid, reason_code)  # settles it and sends the next, right here (#18)

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            self._push("message", gen, message)

        def on_subscribe(_c: Any, _u: Any, mid: int, reason_codes: Any, properties: Any) -> None:
            self._push("suback", gen, reason_codes)

        client.on_subscribe = on_subscribe

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message

    # ---- supervisor -----------------------------------------------------------
    def _supervise(self) -> None:
        assert self._state is not None
        # Deleting acknowledged rows need not be fsynced: losing a delete only re-sends a duplicate.
        self._state.use_synchronous_normal()
        try:
            while not self._stopping.is_set():
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any one failure
                    log.exception("MQTT link supervisor error (%s); dropping the connection and retrying", exc)
                    try:
                        self._teardown(f"internal error: {exc}", failed=True)
                    except Exception as again:  # noqa: BLE001 - e.g. a full disk refuses the status row too
                        # The connection is already dropped; only the status write failed. Without this the
                        # thread died and the link stayed down until a restart (found by bench/faults.py, disk).
                        log.error("MQTT link could not record its state (%s); retrying in 1 s", again)
                        self._stopping.wait(1.0)
            self._shutdown()
        finally:
            self._state.close()

    def _step(self) -> None:
        now = time.monotonic()
        if self._client is None:
            if now >= self._next_attempt:
                self._connect()
            else:
                self._wake.wait(min(self._next_attempt - now, 0.5))
                self._wake.clear()
            return
        self._wake.clear()
        self._handle_events()
        if self._client is None or not self.connected.is_set():
            if self._client is not None:
                self._wake.wait(0.05)
            return
        if self._dirty:
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            for lane in dirty:
                self._exhausted[lane] = False
        if now - self._last_poll >= self.config.poll_interval_s:
            self._last_poll = now  # rows queued by other processes (evidence service, CLI)
            for lane in ob.LANES:
                self._exhausted[lane] = False
        self._maybe_tree_head(now)
        self._feed()
        self._flush_deletes()
        self._check_drained()
        if not self._events and not self._dirty:
            self._wake.wait(self.config.poll_interval_s)

    def _connect(self) -> None:
        assert self._state is not None
        with self._pump_lock:
            self._gen += 1
            gen = self._gen
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        client = FastAckClient(
            CallbackAPIVersion.VERSION2, client_id=self.config.client_id or self.gateway_id,
            protocol=self._protocol, reconnect_on_failure=False, clean_session=None if v5 else True,
        )
        client.max_inflight_messages_set(self.config.max_inflight)
        if self.url.username:
            client.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            self._configure_tls(client)
        client.will_set(self.root + "state", gateway_state(self.gateway_id, "offline"), qos=1, retain=True)
        self._bind(client, gen)
        proto_name = "5" if v5 else "3.1.1"
        self._set_status("connecting", f"connecting to {self.url.redacted()} (MQTT {proto_name})", protocol=proto_name)
        try:
            if v5:
                client.connect(self.url.host, self.url.port, self.config.keepalive, clean_start=True)
            else:
                client.connect(self.url.host, self.url.port, self.config.keepalive)
        except ssl.SSLError as exc:
            self._connect_failed("tls-error", f"TLS handshake with {self.url.redacted()} failed: {exc.reason or exc}; "
                                 "check the broker's CA (identity/ca.pem) and the gateway certificate")
            return
        except (OSError, ValueError) as exc:
            self._connect_failed("unreachable", f"cannot reach {self.url.redacted()}: {exc}")
            return
        net = threading.Thread(target=self._network_main, args=(client, gen), name=f"egw-mqtt-net-{gen}", daemon=True)
        self._client, self._net = client, net
        net.start()
        deadline = time.monotonic() + self.config.connect_timeout_s
        while not self.connected.is_set() and self._client is client and not self._stopping.is_set():
            if time.monotonic() > deadline:
                if self._fall_back_to_311(f"sent no CONNACK within {self.config.connect_timeout_s} s"):
                    return
                self._teardown(f"no CONNACK from {self.url.redacted()} within {self.config.connect_timeout_s} s", failed=True)
                return
            self._wake.wait(0.05)
            self._wake.clear()
            self._handle_events()

    def _configure_tls(self, client: mqtt.Client) -> None:
        ident = self.data_dir / "identity"
        ca = self.config.ca_file or (ident / "ca.pem" if (ident / "ca.pem").exists() else None)
        cert = self.config.cert_file or ident / "gateway.crt"
        key = self.config.key_file or ident / "gateway.key"
        try:
            client.tls_set(ca_certs=str(ca) if ca else None, certfile=str(cert), keyfile=str(key),
                           keyfile_password=os.environ.get(identity_mod.PASSPHRASE_ENV) or None,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot set up TLS for {self.url.redacted()}: {exc}",
                              "check identity/gateway.crt, gateway.key, ca.pem and EGW_KEY_PASSPHRASE") from exc

    def _network_main(self, client: FastAckClient, gen: int) -> None:
        try:
            client.run_loop()
            self._push("net-exit", gen, None)
        except BaseException as exc:  # noqa: BLE001 - report, the supervisor restarts the client
            log.error("MQTT network thread died: %s: %s; the link will reconnect", type(exc).__name__, exc)
            self._push("net-exit", gen, exc)

    def _handle_events(self) -> None:
        refused: list[tuple[ob.OutboxMessage, Any]] = []
        while self._events:
            event = self._events.popleft()
            kind, gen = event[0], event[1]
            if gen != self._gen:
                continue  # from a connection already torn down
            if kind == "refused":
                refused.append((event[2], event[3]))
                continue
            self._park_refused(refused)
            refused = []
            if kind == "connack":
                self._on_connack(event[2])
            elif kind == "suback":
                codes = event[2] or []
                if any(getattr(rc, "is_failure", False) for rc in codes):
                    why = f"broker refused the command subscription {self.root}cmd/+ ({codes[0]}); commands will not arrive"
                    log.error("MQTT: %s", why)
                    self._set_status("connected", "connected, but commands are refused by the broker ACL", error=why)
                self.ready.set()
            elif kind == "message":
                self._on_message(event[2])
            elif kind in ("disconnect", "net-exit"):
                if kind == "net-exit" and event[2] is not None:
                    self.stats.network_restarts += 1
                    self._teardown(f"network thread died: {type(event[2]).__name__}: {event[2]}", failed=True)
                elif not self.connected.is_set() and self._fall_back_to_311("closed the connection before a CONNACK"):
                    return
                elif not self.connected.is_set():
                    why = f"{self.url.redacted()} closed the connection before accepting it (no CONNACK)"
                    if self.url.tls:
                        why += ("; with TLS this usually means the broker does not trust this gateway's certificate "
                                "(enrolled? identity/gateway.crt issued by the broker's CA?)")
                    self._teardown(why, failed=True, state="refused")
                else:
                    rc = event[2]
                    code = int(getattr(rc, "value", 0) or 0)
                    why = f"connection to {self.url.redacted()} lost" + (f" ({rc})" if code else "")
                    self._teardown(why, failed=True)
                return
        self._park_refused(refused)

    def _fall_back_to_311(self, what: str) -> bool:
        """Some 3.1.1-only brokers (amqtt, old Mosquitto) drop an MQTT 5 CONNECT without a CONNACK.
        In "auto" mode that is answered like a refusal: the next attempt speaks 3.1.1."""
        if self.config.protocol != "auto" or self._protocol != MQTTProtocolVersion.MQTTv5:
            return False
        log.warning("broker %s %s to an MQTT 5 CONNECT; trying MQTT 3.1.1", self.url.redacted(), what)
        self._protocol = MQTTProtocolVersion.MQTTv311
        self._teardown(f"broker {what} to MQTT 5; falling back to MQTT 3.1.1", failed=False)
        self._next_attempt = 0.0
        return True

    def _on_connack(self, reason_code: Any) -> None:
        assert self._client is not None
        if reason_code.is_failure:
            value = int(getattr(reason_code, "value", 0))
            text = str(reason_code)
            if self.config.protocol == "auto" and self._protocol == MQTTProtocolVersion.MQTTv5 and value in (1, 0x84):
                log.warning("broker %s refuses MQTT 5 (%s); falling back to 3.1.1", self.url.redacted(), text)
                self._protocol = MQTTProtocolVersion.MQTTv311
                self._teardown("falling back to MQTT 3.1.1", failed=False)
                self._next_attempt = 0.0
                return
            state = "refused"
            hint = {4: "bad user name or password", 5: "not authorised", 0x86: "bad user name or password",
                    0x87: "not authorised", 0x8C: "bad authentication method"}.get(value, "")
            self._teardown(f"broker {self.url.redacted()} refused the connection: {text}"
                           + (f" — {hint}; check credentials / certificate and the broker ACL" if hint else ""),
                           failed=True, state=state)
            return
        self._failures = 0
        self.stats.connects += 1
        self.connected.set()
        proto = "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"
        self._set_status("connected", f"connected to {self.url.redacted()} (MQTT {proto})", protocol=proto)
        log.info("MQTT link up: %s as %s (MQTT %s)", self.url.redacted(), self.gateway_id, proto)
        self._client.publish(self.root + "state", gateway_state(self.gateway_id, "online"), qos=1, retain=True)
        if self.config.handle_commands:
            self._client.subscribe(self.root + "cmd/+", qos=1)
        else:
            self.ready.set()
        for lane in ob.LANES:
            self._exhausted[lane] = False

    def _connect_failed(self, state: str, message: str) -> None:
        self.stats.connect_failures += 1
        self._failures += 1
        delay = self._backoff()
        log.warning("MQTT link %s: %s; retrying in %.1f s", state, message, delay)
        self._set_status(state, message, error=message)

    def _backoff(self) -> float:
        """Exponential backoff with jitter (half to full of the step), so a fleet does not reconnect in step."""
        step = min(self.config.backoff_max_s, self.config.backoff_min_s * (2 ** min(self._failures - 1, 16)))
        delay = random.uniform(step / 2, step)
        self._next_attempt = time.monotonic() + delay
        return delay

    def _teardown(self, reason: str, *, failed: bool, state: str = "disconnected") -> None:
        client, net = self._client, self._net
        self._client, self._net = None, None
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.ready.clear()
        with self._pump_lock:
            self._gen += 1  # events still queued from that client are ignored; its on_publish sends nothing
        if client is not None:
            sock = client.socket()
            try:
                if sock is not None:
                    sock.close()  # not DISCONNECT: an unclean end keeps the last will meaningful
            except OSError:
                pass
            client._thread_terminate = True  # noqa: SLF001 - stop loop_forever promptly
        if net is not None and net is not threading.current_thread():
            net.join(2.0)
        self._flush_deletes(wait=True)  # acknowledged rows must be gone before the cursors rewind
        # Everything un-acknowledged goes out again, oldest first.
        with self._pump_lock:
            self._sent_before.update(m.id for m in self._inflight.values())
            self._inflight.clear()
            for lane in ob.LANES:
                self._buffers[lane].clear()
                self._cursor[lane] = 0
                self._exhausted[lane] = False
        if failed:
            if was_connected:
                self._failures = 1
            else:
                self._failures += 1
                self.stats.connect_failures += 1
            delay = self._backoff()
            log.warning("MQTT link: %s; reconnecting in %.1f s", reason, delay)
            self._set_status(state, reason, error=reason)

    # ---- shutdown ---------------------------------------------------------------
    def _shutdown(self) -> None:
        client = self._client
        if client is not None and self.connected.is_set():
            # finish what is in flight (bounded), then say goodbye so the will is not sent
            deadline = time.monotonic() + 2.0
            info = client.publish(self.root + "state", gateway_state(self.gateway_id, "offline"), qos=1, retain=True)
            while (self._inflight or not info.is_published()) and time.monotonic() < deadline and self._client is client:
                self._wake.wait(0.02)
                self._wake.clear()
                self._handle_events()
            self._flush_deletes(wait=True)
            if self._client is client:
                client.disconnect()
                if self._net is not None:
                    self._net.join(2.0)
                self._client, self._net = None, None
        elif client is not None:
            self._teardown("stopping", failed=False)
        self.connected.clear()
        self.ready.clear()
        self._flush_deletes(wait=True)
        self._set_status("stopped", "link stopped by the gateway")
