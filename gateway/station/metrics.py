"""Prometheus metrics for a station (``prometheus-client``, its own registry).

Names follow Prometheus conventions; each is documented in its help text so
``curl /metrics`` explains itself. Served by prometheus-client's own WSGI app behind a ``Host:``
check (``gateway.web.hosts``): a page elsewhere cannot read the counters through DNS rebinding.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from gateway.web.hosts import MISDIRECTED_STATUS, HostPolicy

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes_ingested = Counter("egw_ingested_bytes", "Bytes stored as evidence", registry=r)
        self.items_ingested = Counter("egw_ingested_items", "Evidence items ingested", ["kind"], registry=r)
        self.items_by_state = Gauge("egw_evidence_items", "Evidence items by state", ["state"], registry=r)
        self.queue_depth = Gauge("egw_upload_queue_items", "Items waiting for a platform receipt", registry=r)
        self.queue_oldest_age = Gauge("egw_upload_queue_oldest_age_seconds", "Age of the oldest unreceipted item", registry=r)
        self.uploaded_bytes = Counter("egw_uploaded_bytes", "Bytes sent to the platform", registry=r)
        self.devices = Gauge("egw_devices", "Devices currently attached", ["kind"], registry=r)
        self.errors = Counter("egw_errors", "Errors by kind", ["kind"], registry=r)
        self.device_failures = Counter("egw_device_failures", "Times a device's watcher failed and was retried "
                                       "with backoff, per configured device (kind:name)", ["device"], registry=r)
        self.device_retry_in = Gauge("egw_device_retry_in_seconds", "Backoff before the next attempt after a "
                                     "device's latest failure (0 once it works again)", ["device"], registry=r)
        self.outbox_depth = Gauge("egw_mqtt_outbox_messages", "MQTT messages waiting for PUBACK", registry=r)
        self._server: WSGIServer | None = None

    def serve(self, host: str, port: int, hostnames: Iterable[str] = ()) -> int:
        """Start the HTTP exporter in a daemon thread; returns the bound port."""
        policy = HostPolicy(host, hostnames)
        server_class = _server_class(host)
        server = make_server(host, port, _host_checked(make_wsgi_app(self.registry), policy), server_class,
                             handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (the service logs JSON), and the local address for the Host check."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ["egw.local_address"] = str(self.connection.getsockname()[0])
        return environ


def _server_class(host: str) -> type[WSGIServer]:
    """A threading server of the address family ``host`` needs (IPv6 literals included)."""
    family = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return Server


def _host_checked(app: WSGIApplication, policy: HostPolicy) -> WSGIApplication:
    def checked(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if policy.allows(environ.get("HTTP_HOST"), environ.get("egw.local_address")):
            return app(environ, start_response)
        body = policy.refusal(environ.get("HTTP_HOST"), int(environ.get("SERVER_PORT") or 0)).encode()
        start_response(f"{MISDIRECTED_STATUS} Misdirected Request",
                       [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]
    return checked
