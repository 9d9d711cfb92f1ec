"""A gateway process for the kill tests: ``python -m tests.mqtt_gateway_proc DATA_DIR URL N``.

Queues N results (message ids r0…r{N-1}) through the durable outbox while
the link sends them, printing ``committed K`` whenever r0…r{K-1} are all on
disk, then ``drained`` once every PUBACK arrived; with N = 0 it only drains
what an earlier (killed) run left and exits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gateway.uplink.mqtt_config import LinkConfig
from gateway.uplink.mqtt_link import MqttLink
from protos.egw.v1 import events_pb2


def main(argv: list[str]) -> int:
    data_dir, url, n = Path(argv[0]), argv[1], int(argv[2])
    link = MqttLink(data_dir, LinkConfig(url, handle_commands=False, max_inflight=5, window=5)).start()
    if not link.wait_connected(10):
        print("not connected", flush=True)
        return 1
    print("connected", flush=True)
    pending = []
    for i in range(n):
        pending.append(link.put_result(events_pb2.RapidTestResult(message_id=f"r{i}", sample_id="x" * 200)))
        if (i + 1) % 25 == 0:
            for fut in pending:
                fut.result(10)
            pending.clear()
            print(f"committed {i + 1}", flush=True)
            time.sleep(0.01)
    for fut in pending:
        fut.result(10)
    print(f"committed {n}", flush=True)
    ok = link.wait_drained(30)
    print("drained" if ok else "not drained", flush=True)
    if n and len(argv) < 4:
        time.sleep(60)  # stay connected until the test kills us
    link.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
