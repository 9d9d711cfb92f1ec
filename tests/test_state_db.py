"""The state database's transaction wrapper when SQLite has already ended the transaction itself.

SQLite rolls a transaction back on its own after SQLITE_FULL or SQLITE_IOERR. A caller that caught
that error and went on used to get "cannot commit - no transaction is active" (or, on the error path,
"cannot rollback…", hiding the real error) — and its later statements had run outside any transaction.
"""

from pathlib import Path

import pytest

from gateway.errors import StateError
from gateway.evidence.state import State


def _count(state: State) -> int:
    return int(state.db.execute("SELECT COUNT(*) FROM custody_frontier").fetchone()[0])


def test_a_transaction_sqlite_already_rolled_back_is_reported_not_committed(tmp_path):
    with State(tmp_path) as state:
        with pytest.raises(StateError, match="ended a transaction early"):
            with state.transaction() as db:
                db.execute("INSERT INTO custody_frontier (height, hash) VALUES (1, x'00')")
                db.execute("ROLLBACK")  # what SQLite does by itself on a full disk
        assert _count(state) == 0
        assert not state.db.in_transaction
        with state.transaction() as db:  # the connection is usable afterwards
            db.execute("INSERT INTO custody_frontier (height, hash) VALUES (2, x'01')")
        assert _count(state) == 1


def test_the_original_error_is_not_hidden_by_a_failed_rollback(tmp_path):
    with State(tmp_path) as state:
        with pytest.raises(ZeroDivisionError):
            with state.transaction() as db:
                db.execute("ROLLBACK")
                1 / 0
        assert not state.db.in_transaction


def _open_state_at(data_dir: str, start: "multiprocessing.synchronize.Barrier") -> None:
    from gateway.evidence.state import State

    start.wait(30)  # every process imported and ready: they open the database within microseconds
    State(Path(data_dir)).close()


def test_processes_opening_a_fresh_data_directory_at_once_all_succeed(tmp_path):
    """Migrations re-read the schema version under the write lock: without that, the losers of the race
    failed with 'table evidence already exists'."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start = context.Barrier(6)
    workers = [context.Process(target=_open_state_at, args=(str(tmp_path / "gw"), start)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * 6
