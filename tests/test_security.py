"""Secrets stay out of everything an operator can read, and TLS cannot be switched off by accident.

Issue 9: the key passphrase, the enrolment token and the broker password never appear in logs
(at debug level too), status output or metrics; key files are 0600; plaintext to the platform
only when the enrolment AND the station's config both ask for it.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from simulators.platform.cli import list_received
from tests.conftest import REPO, egw_env, run_egw, spawn_egw
from tests.mqtt_support import Mosquitto, free_port
from tests.uplink_support import ingest_random, spawn_platform, stop_process

PASSPHRASE = "pass-phrase-Zq7!x"
MQTT_PASSWORD = "mqtt-Secret-81xK"


def _config(path: Path, data: Path, *, mqtt_url: str = "", analyzer: str = "", metrics: str = "",
            insecure: bool | None = None) -> Path:
    text = f'data_dir = "{data}"\nlog_format = "json"\nlog_level = "debug"\n[screen]\nlisten = ""\n'
    text += f'[metrics]\nlisten = "{metrics}"\n'
    if insecure is not None:
        text += f"[platform]\ninsecure = {str(insecure).lower()}\n"
    if mqtt_url:
        text += f'[mqtt]\nurl = "{mqtt_url}"\n'
    if analyzer:
        text += f'[[devices]]\nkind = "rapidtest"\nname = "analyzer"\nport = "{analyzer}"\n'
    path.write_text(text)
    return path


class Gateway:
    """``egw run`` with its output in a file: at debug level it writes more than a pipe holds, and a
    pipe nobody reads would block the gateway in the middle of a log call."""

    def __init__(self, tmp_path: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.log = tmp_path / f"{config.stem}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], cwd=REPO,
                                         env=env or egw_env(), stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"egw run exited ({self.proc.returncode}) while waiting for {what}: {self.text()[-3000:]}")
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; egw run said: {self.text()[-3000:]}")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0, self.text()[-3000:]
        return self.text()


def _mqtt_status(data: Path, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    proc = run_egw("mqtt", "status", "--data-dir", str(data), "--json", env=env)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}


def test_passphrase_token_and_broker_password_never_reach_logs_status_or_metrics(tmp_path: Path) -> None:
    passwords = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "egw", MQTT_PASSWORD], check=True)
    # "user root": mosquitto started as root otherwise drops to its own user, which cannot read a pytest tmp dir
    broker = Mosquitto(tmp_path, extra=f"user root\nallow_anonymous false\npassword_file {passwords}\n").start()
    platform, address, _ = spawn_platform(tmp_path / "platform")
    analyzer = spawn_egw("simulate", "rapidtest", "--tests", "2", "--tcp", "0", "--interval", "0.2",
                         "--reply-timeout", "2", "--retry-delay", "0.2")
    env = egw_env(EGW_KEY_PASSPHRASE=PASSPHRASE)
    data = tmp_path / "gw"
    seen: list[str] = []  # everything an operator could read
    try:
        seen.append(run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-secrets", env=env, check=True).stdout)
        key = data / "identity" / "gateway.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"ENCRYPTED" in key.read_bytes()
        token = json.loads(run_egw("platform", "token", "--data", str(tmp_path / "platform"), "--gateway-id", "gw-secrets",
                                   "--json", check=True).stdout)["token"]
        enrolled = run_egw("enroll", "--platform", address, "--token", token, "--data-dir", str(data), env=env, check=True)
        seen += [enrolled.stdout, enrolled.stderr]
        assert stat.S_IMODE(key.stat().st_mode) == 0o600  # enrolment rewrote identity files: still private
        analyzer_url = analyzer.stdout.readline().strip()

        # 1. the wrong broker password: refused, and said so, without printing either password
        wrong = f"mqtt://egw:wrong-{MQTT_PASSWORD}@127.0.0.1:{broker.port}"
        gateway = Gateway(tmp_path, _config(tmp_path / "wrong.toml", data, mqtt_url=wrong), env)
        gateway.wait(lambda: "authori" in json.dumps(_mqtt_status(data, env)).lower(), 60, "the broker's refusal in mqtt status")
        refused = json.dumps(_mqtt_status(data, env))
        seen += [refused, gateway.stop()]

        # 2. the right one: results flow, status and metrics are read
        metrics_port = free_port()
        right = f"mqtt://egw:{MQTT_PASSWORD}@127.0.0.1:{broker.port}"
        config = _config(tmp_path / "right.toml", data, mqtt_url=right, analyzer=analyzer_url,
                         metrics=f"127.0.0.1:{metrics_port}")
        gateway = Gateway(tmp_path, config, env)

        def delivered() -> bool:
            status = json.loads(run_egw("status", "--data-dir", str(data), "--json", env=env).stdout)
            return (len(list_received(tmp_path / "platform")) >= 4 and status["mqtt"]["link"].get("state") == "connected"
                    and status["mqtt"]["outbox"]["count"] == 0)

        gateway.wait(delivered, 90, "two results (transcript + result each) receipted and MQTT connected")
        seen.append(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
        seen.append(run_egw("status", "--data-dir", str(data), "--json", env=env, check=True).stdout)
        seen.append(run_egw("mqtt", "status", "--data-dir", str(data), env=env, check=True).stdout)
        seen.append(gateway.stop())
    finally:
        stop_process(analyzer)
        stop_process(platform)
        broker.kill()
    seen.append(broker.log.read_text(errors="replace"))
    everything = "\n".join(seen)
    assert '"level": "debug"' in everything, "debug logging was not on, so the test proves less than it claims"
    assert "authori" in refused.lower(), refused
    for secret, name in ((PASSPHRASE, "key passphrase"), (MQTT_PASSWORD, "broker password"), (token, "enrolment token"),
                         (token.rsplit(".", 1)[-1], "token secret")):
        assert secret not in everything, f"the {name} appears in what an operator can read"


def test_plaintext_to_the_platform_needs_the_config_to_ask_for_it_too(tmp_path: Path) -> None:
    """A data directory enrolled with --insecure, deployed under a config that does not allow plaintext,
    used to upload unencrypted without anyone having chosen it there (the config key was ignored)."""
    platform, address, _ = spawn_platform(tmp_path / "platform", "--insecure")
    data = tmp_path / "gw"
    try:
        run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-plain", check=True)
        token = json.loads(run_egw("platform", "token", "--data", str(tmp_path / "platform"), "--gateway-id", "gw-plain",
                                   "--json", check=True).stdout)["token"]
        run_egw("enroll", "--platform", address, "--token", token, "--data-dir", str(data), "--insecure", check=True)
        from tests.uplink_support import LinkedGateway

        item = ingest_random(LinkedGateway(data), 20_000, "note.txt")
        gateway = Gateway(tmp_path, _config(tmp_path / "strict.toml", data))
        gateway.wait(lambda: '"event": "ready"' in gateway.text(), 60, "egw run to start")  # the refusal comes before
        time.sleep(1.0)  # a chance to (wrongly) upload
        log = gateway.stop()
        assert list_received(tmp_path / "platform") == []
        assert "enrolled without TLS" in log and "insecure = true" in log, log[-2000:]

        gateway = Gateway(tmp_path, _config(tmp_path / "lab.toml", data, insecure=True))
        gateway.wait(lambda: [r["evidence_id"] for r in list_received(tmp_path / "platform")] == [item.evidence_id], 60,
                     "the item delivered once the config allows plaintext")
        gateway.stop()
    finally:
        stop_process(platform)
