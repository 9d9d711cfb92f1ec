from tests.conftest import run_egw


def test_version_and_help():
    proc = run_egw("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("egw ")
    proc = run_egw("--help")
    assert proc.returncode == 0 and "simulate" in proc.stdout


def test_unknown_simulator_says_what_exists():
    proc = run_egw("simulate", "toaster")
    assert proc.returncode == 2
    assert "unknown simulator 'toaster'" in proc.stderr and "hint:" in proc.stderr
