"""The gateway process SIGKILLed mid-stream: the last will is seen, and a restart delivers the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from gateway.evidence.identity import init_identity
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from tests.conftest import REPO, egw_env
from tests.mqtt_support import Mosquitto, Subscriber, wait_for

N = 3000


def _spawn(data_dir: Path, n: int, broker_url: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.mqtt_gateway_proc", str(data_dir), broker_url, str(n)],
                            cwd=REPO, env=egw_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_stream_then_restart_delivers_every_committed_message(tmp_path: Path):
    data_dir = tmp_path / "gw"
    gid = init_identity(data_dir).gateway_id
    # Our own broker, which never drops queued messages for a subscriber that falls behind (the shared
    # broker's default max_queued_messages of 1000 would make "missing" depend on machine load).
    broker = Mosquitto(tmp_path, extra="allow_anonymous true\nmax_queued_messages 0\n").start()
    sub = Subscriber(broker.port, f"egw/v1/{gid}/#").start()
    lines: list[str] = []
    proc = _spawn(data_dir, N, broker.url)
    try:
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        wait_for(lambda: len(sub.json_on("rapidtest")) >= 300, 20, "300 results from the gateway process")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        reader.join(5)
        # the broker saw the TCP connection die without DISCONNECT: it publishes the will
        wait_for(lambda: any(m.get("state") == "offline" for m in sub.json_on("/state")), 5, "the last will")
        committed = max(int(line.split()[1]) for line in lines if line.startswith("committed"))
        received_at_kill = len(sub.json_on("rapidtest"))
        with State(data_dir) as state:
            left_ids = {json.loads(p)["messageId"] for (p,) in state.db.execute("SELECT payload FROM outbox WHERE lane='results'")}
        assert committed < N and left_ids, "the kill was not mid-stream"

        restart = _spawn(data_dir, 0, broker.url)
        out, err = restart.communicate(timeout=30)
        assert restart.returncode == 0 and "drained" in out, err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        sub.stop()
        broker.kill()
    got = [m["messageId"] for m in sub.json_on("rapidtest")]
    unique = set(got)
    missing = [f"r{i}" for i in range(committed) if f"r{i}" not in unique]
    assert not missing, f"{len(missing)} committed messages never arrived, e.g. {missing[:5]}"
    duplicates = len(got) - len(unique)
    duplicated = {m for m in unique if got.count(m) > 1}
    # only what was still in the outbox at the kill is sent again (in flight, or PUBACKed but not yet deleted)
    assert duplicated <= left_ids, f"re-sent messages that had been deleted: {sorted(duplicated - left_ids)[:5]}"
    assert left_ids <= unique
    firsts = [int(m[1:]) for m in dict.fromkeys(got)]
    assert firsts == sorted(firsts), "results arrived out of order"
    states = [m["state"] for m in sub.json_on("/state")]
    assert states[0] == "online" and "offline" in states and states[-1] == "offline"
    with State(data_dir) as state:
        assert ob.usage(state.db).count == 0
    print(f"received at kill {received_at_kill}, committed {committed}, total {len(got)}, duplicates {duplicates}")
