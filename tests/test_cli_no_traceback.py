"""Issue 17: no operator mistake ends in a Python traceback.

Every ``egw`` subcommand (found from the parser itself, so a new one is covered the day it is added),
every simulator, with ``--help``, with an unknown option, without its required arguments, with missing
files and directories, with a port already taken and with its output pipe closed. A case fails on any
``Traceback`` in stderr, on an exit code that says nothing went wrong when something did, or on a hang.
Argument mistakes (caught by argparse before any command code runs) are run in this process through
``gateway.cli.main``, the same code the ``egw`` script runs; everything that reaches a command runs as a
real ``egw`` process, several at once in a thread pool, so the file stays near a minute on a loaded machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.commands.simulate import SIMULATORS
from tests.conftest import REPO, egw_env, run_egw

CASE_TIMEOUT_S = 45.0
WORKERS = 4


@dataclass(frozen=True)
class Case:
    """One ``egw`` invocation an operator could get wrong, and what its exit code may be."""

    args: tuple[str, ...]
    ok_codes: frozenset[int] = frozenset({1, 2})  # a mistake is never "success"
    closed_stdout: bool = False  # stdout is a pipe nobody reads (``egw ls | head -c1`` after head exited)
    stdin: str = ""
    expect: str = ""  # a phrase the error message must contain
    env: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        return " ".join(self.args) + (" | (closed)" if self.closed_stdout else "")


@dataclass
class Outcome:
    case: Case
    code: int | None
    stderr: str
    elapsed_s: float = 0.0

    def problem(self) -> str | None:
        if self.code is None:
            return f"`egw {self.case.name}` did not finish within {CASE_TIMEOUT_S:g} s"
        if "Traceback (most recent call last)" in self.stderr:
            return f"`egw {self.case.name}` printed a traceback:\n{self.stderr[-2500:]}"
        if self.code not in self.case.ok_codes:
            return f"`egw {self.case.name}` exited {self.code}, expected one of {sorted(self.case.ok_codes)}:\n{self.stderr[-1500:]}"
        if self.case.expect and self.case.expect not in self.stderr:
            return f"`egw {self.case.name}` did not say {self.case.expect!r}:\n{self.stderr[-1500:]}"
        return None


def _run(case: Case) -> Outcome:
    env = egw_env(**case.env)
    env.setdefault("EGW_DATA_DIR", "/nonexistent/egw-data")
    stdout: int = subprocess.DEVNULL
    read_end = write_end = None
    if case.closed_stdout:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader has gone before the first byte: every write is EPIPE
        stdout = write_end
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "gateway", *case.args], cwd=REPO, env=env, stdout=stdout,
                              stderr=subprocess.PIPE, input=case.stdin.encode(), timeout=CASE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        return Outcome(case, None, (exc.stderr or b"").decode("utf-8", "replace"))
    finally:
        if write_end is not None:
            os.close(write_end)
    return Outcome(case, proc.returncode, proc.stderr.decode("utf-8", "replace"), time.monotonic() - started)


def _in_process(case: Case) -> Outcome:
    """``main(ARGS)`` here: an escaping exception is what a traceback would have been."""
    stdout, stderr = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code: int | None = main(list(case.args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - exactly what the operator would have seen as a traceback
            stderr.write("Traceback (most recent call last):\n" + traceback.format_exc())
            code = 1
    return Outcome(case, code, stderr.getvalue(), time.monotonic() - started)


def _parser_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield prefix, parser
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk of its subcommands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                yield from _parser_paths(sub, (*prefix, name))


def _leaves() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    paths = list(_parser_paths(build_parser()))
    return [(path, p) for path, p in paths if path and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]  # noqa: SLF001


def _generic_cases() -> list[Case]:
    """From the parser: --help everywhere, an unknown option and no arguments on every leaf."""
    cases = [Case((*path, "--help"), frozenset({0})) for path, _ in _parser_paths(build_parser())]
    for path, parser in _leaves():
        if path == ("simulate",):
            continue  # its arguments belong to each simulator (below)
        cases.append(Case((*path, "--no-such-option"), frozenset({2})))
        required = [a for a in parser._actions if a.required]  # noqa: SLF001
        if required:
            cases.append(Case(path, frozenset({2})))
    for kind in SIMULATORS:
        cases += [Case(("simulate", kind, "--help"), frozenset({0})),
                  Case(("simulate", kind, "--no-such-option"), frozenset({2}))]
    cases += [Case(("simulate",), frozenset({2}), expect="bodycam"), Case(("simulate", "no-such-kind"), frozenset({2}))]
    return cases


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A gateway with a few items, some files that are not what a command wants, and a port in use."""
    tmp = tmp_path_factory.mktemp("cli")
    data = tmp / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    for i in range(30):
        (tmp / f"f{i}.txt").write_text(f"file {i}\n" * 50)
    run_egw("ingest", *[str(tmp / f"f{i}.txt") for i in range(30)], "--data-dir", str(data), check=True)
    (tmp / "empty").mkdir()
    (tmp / "bad.toml").write_text("data_dir = [unclosed\n")
    (tmp / "not-a-photo.jpg").write_text("plain text\n")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    screen_taken = tmp / "screen-taken.toml"
    screen_taken.write_text(f'data_dir = "{tmp / "run-data"}"\n[screen]\nlisten = "127.0.0.1:{port}"\n[metrics]\nlisten = ""\n')
    metrics_taken = tmp / "metrics-taken.toml"
    metrics_taken.write_text(f'data_dir = "{tmp / "run-data2"}"\n[screen]\nlisten = ""\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    for d in ("run-data", "run-data2"):
        run_egw("keys", "init", "--data-dir", str(tmp / d), check=True)
    try:
        yield {"tmp": tmp, "data": data, "port": port, "screen_taken": screen_taken, "metrics_taken": metrics_taken}
    finally:
        taken.close()


def _specific_cases(w: dict[str, object]) -> list[Case]:
    tmp, data, port = Path(str(w["tmp"])), str(w["data"]), int(str(w["port"]))
    names = iter(range(1000))

    def missing_path() -> str:
        """A path that does not exist, its own per case: one case creating it must not change another."""
        return str(tmp / f"missing-{next(names)}")

    d = ("--data-dir", data)
    refused = f"127.0.0.1:{port}"  # listening but never answering: a wrong address, not a hang
    cases = [
        # missing or wrong data directories
        Case(("status", "--data-dir", missing_path())), Case(("ls", "--data-dir", missing_path())),
        Case(("custody", "verify", "--data-dir", missing_path())),
        Case(("mqtt", "status", "--data-dir", missing_path())), Case(("mqtt", "requeue", "--data-dir", missing_path())),
        Case(("export", "no-such-id", str(tmp / "out1"), "--data-dir", missing_path())),
        Case(("export", "no-such-id", str(tmp / "out2"), *d)),
        Case(("ingest", str(tmp / "f1.txt"), "--data-dir", missing_path())),
        Case(("status", "--data-dir", str(tmp / "f1.txt"))), Case(("keys", "init", "--data-dir", "/proc/egw-cannot")),
        Case(("keys", "init", *d)),  # already exists
        # missing or wrong files
        Case(("ingest", missing_path(), *d)), Case(("ingest", str(tmp / "empty"), *d), expect="no files"),
        Case(("verify", missing_path())), Case(("verify", str(tmp / "empty"))), Case(("verify", str(tmp / "f1.txt"))),
        # docs/trust.md: 2 for an unreadable file. The verifier's own branch may word it better; any
        # wording passes here as long as it is exit 2 without a traceback.
        Case(("verify", str(tmp / "empty"), "--trust", missing_path()), frozenset({2})),
        Case(("strip", "read", missing_path())), Case(("strip", "read", str(tmp / "not-a-photo.jpg"))),
        Case(("sign", "--document", missing_path(), "--signer", "x", *d)),
        Case(("run", "-c", missing_path())), Case(("run", "-c", str(tmp / "bad.toml"))),
        Case(("enroll", "--platform", refused, "--token-file", missing_path(), *d)),
        Case(("enroll", "--platform", "not-an-address", "--token", "x", *d)),
        Case(("platform", "tokens", "--data", missing_path())), Case(("platform", "ls", "--data", missing_path())),
        Case(("platform", "cmd", "--data", missing_path(), "--mqtt", "mqtt://127.0.0.1:1", "gw-x", "ping")),
        # bad values
        Case(("ls", "--since", "yesterday-ish", *d)), Case(("ls", "--limit", "-3", *d)), Case(("ls", "--limit", "many", *d)),
        Case(("sync",)), Case(("sync", "--once", "--bandwidth", "fast", *d)), Case(("sync", "--once", "--concurrency", "0", *d)),
        Case(("dock", "--usbip", "not-a-url", *d)),
        Case(("rapidtest", "--port", missing_path(), *d)), Case(("rapidtest", "--port", "bogus://x", *d)),
        Case(("mqtt", "drain", "--mqtt", "http://x", *d)), Case(("mqtt", "drain", "--mqtt", "mqtt://", *d)),
        Case(("mqtt", "publish-test", "--mqtt", "mqtt://127.0.0.1:notaport", *d)),
        Case(("simulate", "bodycam", "--count", "lots")), Case(("simulate", "bodycam", "--listen", "nowhere")),
        Case(("simulate", "rapidtest", "--tcp", "-5")), Case(("simulate", "platform", "--data", "/proc/egw-cannot")),
        Case(("demo", "--workdir", "/proc/egw-cannot")),
        # a port already taken
        Case(("run", "-c", str(w["screen_taken"])), expect="in use"),
        Case(("run", "-c", str(w["metrics_taken"])), expect="in use"),
        Case(("simulate", "bodycam", "--listen", refused)), Case(("simulate", "rapidtest", "--tcp", str(port))),
        Case(("simulate", "fingerprint", "--tcp", str(port))),
        # a closed pipe: `egw ls --json | head -c1`, `egw status --json | head`
        Case(("ls", "--json", *d), frozenset({0, 1, 141}), closed_stdout=True),
        Case(("ls", *d), frozenset({0, 1, 141}), closed_stdout=True),
        Case(("status", "--json", *d), frozenset({0, 1, 141}), closed_stdout=True),
        Case(("status", *d), frozenset({0, 1, 141}), closed_stdout=True),
        Case(("custody", "verify", "--json", *d), frozenset({0, 1, 141}), closed_stdout=True),
        Case(("--help",), frozenset({0, 1, 141}), closed_stdout=True),
        Case(("simulate", "bodycam", "--help"), frozenset({0, 1, 141}), closed_stdout=True),
    ]
    return cases


def test_no_argument_mistake_and_no_help_ends_in_a_traceback() -> None:
    cases = _generic_cases()
    outcomes = [_in_process(case) for case in cases]
    problems = [p for p in (o.problem() for o in outcomes) if p]
    assert not problems, f"{len(problems)} of {len(cases)} invocations went wrong:\n\n" + "\n\n".join(problems)


def test_no_operator_mistake_ends_in_a_traceback(world: dict[str, object]) -> None:
    cases = _specific_cases(world)
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(_run, cases))
    slowest = sorted(outcomes, key=lambda o: -o.elapsed_s)[:8]
    print("slowest:", "; ".join(f"{o.case.name} {o.elapsed_s:.1f} s" for o in slowest))  # shown with -s or on failure
    problems = [p for p in (o.problem() for o in outcomes) if p]
    assert not problems, f"{len(problems)} of {len(cases)} invocations went wrong:\n\n" + "\n\n".join(problems)


def test_every_simulator_help_says_how_to_drive_it_and_the_docs_agree() -> None:
    from simulators.controls import BODYCAM_STDIN, EPILOGS

    docs = (REPO / "docs" / "simulators.md").read_text(encoding="utf-8")
    assert set(EPILOGS) == set(SIMULATORS)
    for kind in SIMULATORS:
        outcome = _in_process(Case(("simulate", kind, "--help"), frozenset({0})))
        assert outcome.problem() is None, outcome.problem()
        assert f"## {kind}" in docs, f"docs/simulators.md has no section for {kind}"
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        main(["simulate", "bodycam", "--help"])
    for command in BODYCAM_STDIN:
        assert command in help_text.getvalue(), f"`egw simulate bodycam --help` does not list {command!r}"
        assert f"`{command}`" in docs, f"docs/simulators.md does not list {command!r}"
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        main(["simulate", "fingerprint", "--help"])
    assert "SIGUSR1" in help_text.getvalue() and "SIGUSR1" in docs


def test_readme_command_tables_list_every_command() -> None:
    """Every subcommand (and every action of a command that has actions) is in a README table row."""
    rows = [line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines() if line.startswith("| `egw ")]
    missing = []
    for path, _parser in _parser_paths(build_parser()):
        if len(path) == 1 and not any(f"| `egw {path[0]}" in row for row in rows):
            missing.append(" ".join(path))
        if len(path) == 2 and not any(row.startswith(f"| `egw {path[0]}") and path[1] in row for row in rows):
            missing.append(" ".join(path))
    assert not missing, f"README.md's command tables do not list: {missing}"
