import tomllib
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from tests.conftest import REPO


def test_the_documented_example_is_valid():
    config = load_config(REPO / "gateway.example.toml")
    assert config.release == "receipt" and len(config.devices) == 2
    assert config.devices[0].usbip == "127.0.0.1:3240" and config.devices[1].port == "/dev/ttyUSB0"


def test_every_problem_is_reported_at_once_with_key_and_fix():
    raw = tomllib.loads("""
data_dir = "/tmp/x"
gatway_id = "typo"
[platform]
address = "no-port"
parallel_uploads = 99
[release]
policy = "whenever"
[mqtt]
url = "http://broker"
[[devices]]
kind = "bodycam"
port = "/dev/ttyUSB0"
volumes = "/mnt/cams"
[[devices]]
kind = "toaster"
[[devices]]
kind = "rapidtest"
name = "a"
prot = "/dev/ttyS0"
""")
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    text = str(info.value)
    for expected in ["gatway_id: unknown key; did you mean 'gateway_id'?", "platform.address: 'no-port' is not HOST:PORT",
                     "parallel_uploads: must be from 1 to 16", "release.policy: 'whenever'", "mqtt.url",
                     "body cameras are USB devices", "{serial}", "devices[1].kind: 'toaster'",
                     "devices[2].prot: unknown key; did you mean 'port'?", "needs one of port, usb or usbip"]:
        assert expected in text, expected
    assert text.startswith("10 problem(s)")


def test_cli_rejects_a_bad_config_with_exit_2(tmp_path):
    from tests.conftest import run_egw

    bad = tmp_path / "g.toml"
    bad.write_text("data_dir = 5\n")
    proc = run_egw("run", "-c", str(bad))
    assert proc.returncode == 2
    assert "data_dir: expected an absolute directory path" in proc.stderr and "hint:" in proc.stderr
    broken = tmp_path / "b.toml"
    broken.write_text("[platform\n")
    proc = run_egw("run", "-c", str(broken))
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr
    proc = run_egw("run", "-c", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


