"""Device drivers: one small class per device family on a codec + a transport.

Drivers know nothing of evidence, MQTT or gRPC, and never ask whether the
device on the other end is simulated.
"""
