"""``egw simulate signpad``: argument handling and the model it serves (no USB/IP server needed)."""

from __future__ import annotations

import json

import pytest

from simulators.signpad import cli
from tests.conftest import run_egw


def test_registered_and_help_via_egw():
    proc = run_egw("simulate", "signpad", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--listen" in proc.stdout and "--signer" in proc.stdout


@pytest.mark.parametrize("argv,steps", [
    ([], [{"sign": "Jane Doe"}, {"tap": "ok"}]),
    (["--signer", "Max Mustermann", "--finish", "cancel"], [{"sign": "Max Mustermann"}, {"tap": "cancel"}]),
    (["--signer", "A B", "--clear-first"], [{"sign": "A B"}, {"tap": "clear"}, {"sign": "A B"}, {"tap": "ok"}]),
    (["--unplug-mid-signature"], [{"sign": "Jane Doe", "fraction": 0.5}, {"unplug": True}]),
])
def test_model_from_arguments(argv, steps):
    args = cli.build_parser().parse_args(argv)
    model = cli.build_model(args)
    assert model.script == steps
    assert (model.vendor_id, model.product_id) == (0x056A, 0x00A8)
    assert model.repeat is True


def test_json_script_file(tmp_path):
    path = tmp_path / "s.json"
    steps = [{"sign": "Z"}, {"pause_ms": 100}, {"tap": "ok"}]
    path.write_text(json.dumps({"steps": steps}))
    model = cli.build_model(cli.build_parser().parse_args(["--signer", str(path), "--once"]))
    assert model.script == steps and model.repeat is False


@pytest.mark.parametrize("argv", [["--listen", "nonsense"], ["--listen", "127.0.0.1:99999"],
                                  ["--signer", '[{"tap": "later"}]'], ["--signer", " "]])
def test_bad_arguments_exit_2_with_a_message(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")


def test_parse_listen():
    assert cli.parse_listen("127.0.0.1:3240") == ("127.0.0.1", 3240)
    assert cli.parse_listen("::1:0") == ("::1", 0)
