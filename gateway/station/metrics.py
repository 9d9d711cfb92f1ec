"""Prometheus metrics for a station (``prometheus-client``, its own registry).

Names follow Prometheus conventions; each is documented in its help text so
``curl /metrics`` explains itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

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

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exporter in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None
