"""The packages listed in CHECKED_PACKAGES stay clean under ``mypy --strict`` and ``ruff check``.

Why a test and not only a CI step: a codec that mixes bytes and str, or
forgets that a lookup may return None, corrupts evidence without raising;
the type checker finds those before a device does.  A package joins the list
once it is clean, and from then on it cannot silently drift back.

Both tools read their settings from pyproject.toml ([tool.mypy], [tool.ruff]);
the last two tests prove the harness really fails on a bad file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: Packages held to mypy --strict and ruff; add yours once `python -m mypy --strict <pkg>` and
#: `python -m ruff check <pkg>` both pass.
CHECKED_PACKAGES: tuple[str, ...] = ("firmware_bridge", "drivers", "gateway")

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "pyproject.toml"
# test-artifacts/ is git-ignored; a warm cache turns a 5 s mypy run into half a second.
MYPY_CACHE = REPO / "test-artifacts" / "mypy-cache"


def _mypy(*targets: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(CONFIG), "--cache-dir", str(MYPY_CACHE),
         "--no-error-summary", "--no-color-output", *map(str, targets)],
        cwd=REPO, capture_output=True, text=True, timeout=280)


def _ruff(*targets: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--config", str(CONFIG), "--no-cache", "--output-format", "concise",
         *map(str, targets)],
        cwd=REPO, capture_output=True, text=True, timeout=120)


def _report(tool: str, result: subprocess.CompletedProcess[str]) -> str:
    return f"{tool} exited {result.returncode}:\n{result.stdout}{result.stderr}"


def test_checked_packages_pass_mypy_strict() -> None:
    result = _mypy(*CHECKED_PACKAGES)
    assert result.returncode == 0, _report("mypy --strict", result)


def test_checked_packages_pass_ruff() -> None:
    result = _ruff(*CHECKED_PACKAGES)
    assert result.returncode == 0, _report("ruff check", result)


@pytest.fixture
def bad_module(tmp_path: Path) -> Path:
    """A module with one type error and one unused import: what each tool must catch."""
    path = tmp_path / "bad_module.py"
    path.write_text('import os\n\n\ndef frame_length(frame: bytes) -> int:\n    return frame.decode("ascii")\n')
    return path


def test_mypy_harness_fails_on_a_type_error(bad_module: Path) -> None:
    result = _mypy(bad_module)
    assert result.returncode != 0 and "bad_module.py:5" in result.stdout, _report("mypy --strict", result)


def test_ruff_harness_fails_on_an_unused_import(bad_module: Path) -> None:
    result = _ruff(bad_module)
    assert result.returncode != 0 and "F401" in result.stdout, _report("ruff check", result)
