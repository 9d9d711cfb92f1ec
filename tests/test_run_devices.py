"""``egw run`` supervision: a device that keeps failing disturbs nobody; an analyzer unplugged and
plugged back in is picked up again without a restart."""

import json
import signal
import socket

from tests.conftest import run_egw, spawn_egw
from tests.test_station import state, wait_for
from tests.uplink_support import stop_process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _analyzer(port: int, tests: int):
    proc = spawn_egw("simulate", "rapidtest", "--tests", str(tests), "--tcp", str(port), "--interval", "0.2",
                     "--reply-timeout", "2", "--retry-delay", "0.2")
    assert proc.stdout.readline().strip() == f"socket://127.0.0.1:{port}", proc.stderr.read()
    return proc


def test_failing_device_is_isolated_and_a_replugged_analyzer_resumes(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    port = _free_port()
    first = _analyzer(port, 2)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
data_dir = "{data}"
[screen]
listen = "127.0.0.1:0"
[metrics]
listen = ""
[[devices]]
kind = "rapidtest"
name = "broken"
port = "{tmp_path / 'no-such-tty'}"
[[devices]]
kind = "rapidtest"
name = "good"
port = "socket://127.0.0.1:{port}"
""")
    gateway = spawn_egw("run", "-c", str(config))
    second = None
    try:
        screen = json.loads(gateway.stdout.readline())["screen"]
        wait_for(lambda: len(state(screen)["results"]) == 2, 60, "the good analyzer's first two results")
        cards = {d["name"]: d for d in state(screen)["devices"]}
        assert cards["broken"]["state"] in ("undocked", "error") and "not" in cards["broken"]["detail"]
        # Unplug the good analyzer, then plug it back in (same port): results flow again, no restart.
        stop_process(first)
        wait_for(lambda: {d["name"]: d for d in state(screen)["devices"]}["good"]["state"] in ("error", "undocked"), 30,
                 "the unplugged analyzer to show a problem")
        second = _analyzer(port, 2)
        wait_for(lambda: len(state(screen)["results"]) == 4, 60, "results after re-plugging")
        assert gateway.poll() is None
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=12) == 0
        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["counts"]["queued"] == 8  # 4 results + 4 transcripts, none lost or doubled
    finally:
        for proc in (gateway, first, second):
            if proc is not None:
                stop_process(proc)
