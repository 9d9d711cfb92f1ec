"""``egw ls`` over a real store: files ingested from two devices and two officers, some delivered to
the reference platform (receipted), some not; each filter, the JSON shape, escaped names, clear
errors. Also the human output of ``egw rapidtest`` and ``egw sign``: evidence ids and names that
tell items apart."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from gateway.commands.ls import parse_since, printable
from gateway.errors import ConfigError
from tests.conftest import run_egw, spawn_egw
from tests.uplink_support import spawn_platform, stop_process

pytestmark = pytest.mark.timeout(240)

KEYS = {"evidence_id", "kind", "device_id", "officer_id", "source_path", "source_name", "size", "state",
        "receipt_id", "ingested_at"}
HOSTILE = "evil\x1b[31m[red]x[bold].avi"


def _ls(data: Path, *args: str) -> list[dict]:
    done = run_egw("ls", "--data-dir", str(data), "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ingest(data: Path, files: list[Path], *args: str) -> list[str]:
    done = run_egw("ingest", "--data-dir", str(data), "--json", *args, *map(str, files))
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    rows = parsed if isinstance(parsed, list) else parsed.get("items", [parsed])
    return [row["evidence_id"] for row in rows]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Five items: cam-1/officer 100001 (two videos, one with a hostile name), cam-2/100002 (a photo),
    all three receipted by the platform; then a document with no device and a cam-2 photo, queued."""
    root = tmp_path_factory.mktemp("ls")
    platform, address, _ = spawn_platform(root / "platform")
    try:
        data = root / "gw"
        run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-ls", check=True)
        token = json.loads(run_egw("platform", "token", "--data", str(root / "platform"), "--gateway-id", "gw-ls", "--json", check=True).stdout)["token"]
        run_egw("enroll", "--platform", address, "--token", token, "--data-dir", str(data), check=True)
        src = root / "src"
        src.mkdir()
        for name, body in (("a.avi", b"RIFF video a"), (HOSTILE, b"RIFF video b"), ("p.jpg", b"\xff\xd8 photo"),
                           ("doc.txt", b"a document"), ("q.jpg", b"\xff\xd8 photo q")):
            (src / name).write_bytes(body)
        cam1 = _ingest(data, [src / "a.avi", src / HOSTILE], "--device-id", "cam-1", "--officer-id", "100001", "--kind", "video")
        cam2 = _ingest(data, [src / "p.jpg"], "--device-id", "cam-2", "--officer-id", "100002", "--kind", "photo")
        assert run_egw("sync", "--once", "--data-dir", str(data)).returncode == 0
        cut = datetime.now().astimezone().isoformat()
        time.sleep(0.01)  # the next items' created_at is strictly after the cut
        later = _ingest(data, [src / "doc.txt"], "--kind", "document")
        later += _ingest(data, [src / "q.jpg"], "--device-id", "cam-2", "--officer-id", "100002", "--kind", "photo")
        yield {"data": data, "cam1": cam1, "cam2": cam2, "later": later, "cut": cut, "root": root}
    finally:
        stop_process(platform)


def test_json_is_one_array_of_items_newest_first(store: dict) -> None:
    items = _ls(store["data"])
    assert [i["evidence_id"] for i in items] == list(reversed(store["cam1"] + store["cam2"] + store["later"]))
    assert all(set(item) == KEYS for item in items)
    receipted = {i["evidence_id"]: i for i in items if i["state"] == "receipted"}
    assert set(receipted) == set(store["cam1"] + store["cam2"])
    assert all(re.fullmatch(r"\S+", i["receipt_id"] or "") for i in receipted.values())
    assert all(i["receipt_id"] is None and i["state"] == "queued" for i in items if i["evidence_id"] in store["later"])
    hostile = next(i for i in items if i["source_path"].endswith(".avi") and "evil" in i["source_path"])
    assert hostile["source_name"] == HOSTILE  # JSON carries the name verbatim; only the table escapes
    assert hostile["size"] == len(b"RIFF video b") and hostile["kind"] == "video"
    assert hostile["device_id"] == "cam-1" and hostile["officer_id"] == "100001"
    assert datetime.fromisoformat(hostile["ingested_at"]).tzinfo is not None


def test_each_filter(store: dict) -> None:
    data = store["data"]
    ids = lambda *args: {i["evidence_id"] for i in _ls(data, *args)}  # noqa: E731
    assert ids("--device", "cam-1") == set(store["cam1"])
    assert ids("--device", "cam-2") == set(store["cam2"]) | {store["later"][1]}
    assert ids("--device", "cam-9") == set()
    assert ids("--officer", "100002") == set(store["cam2"]) | {store["later"][1]}
    assert ids("--kind", "video") == set(store["cam1"])
    assert ids("--kind", "video", "--kind", "document") == set(store["cam1"]) | {store["later"][0]}
    assert ids("--state", "queued") == set(store["later"])
    assert ids("--state", "queued", "--state", "receipted") == set(store["cam1"] + store["cam2"] + store["later"])
    assert ids("--since", store["cut"]) == set(store["later"])
    assert ids("--since", "1h") == set(store["cam1"] + store["cam2"] + store["later"])
    assert ids("--since", "0s") == set()
    assert ids("--since", "2999-01-01") == set()
    assert [i["evidence_id"] for i in _ls(data, "--limit", "2")] == list(reversed(store["later"]))
    assert _ls(data, "--limit", "0") == []
    assert ids("--device", "cam-2", "--state", "receipted", "--officer", "100002") == set(store["cam2"])


def test_table_names_every_item_and_escapes_device_names(store: dict) -> None:
    done = run_egw("ls", "--data-dir", str(store["data"]))
    assert done.returncode == 0, done.stderr
    for evidence_id in store["cam1"] + store["cam2"] + store["later"]:
        assert evidence_id in done.stdout  # whole ids, never cut short
    assert "\x1b" not in done.stdout
    assert printable(HOSTILE) in done.stdout  # "evil\x1b[31m[red]x[bold].avi", markup shown, not obeyed
    receipts = {i["receipt_id"] for i in _ls(store["data"], "--state", "receipted")}
    assert all(r in done.stdout for r in receipts)
    empty = run_egw("ls", "--data-dir", str(store["data"]), "--device", "cam-9")
    assert empty.returncode == 0 and "no evidence matches" in empty.stdout


@pytest.mark.parametrize("args, words", [
    (("--since", "yesterday"), "--since 'yesterday' is neither a date/time nor a duration"),
    (("--since", "2h30"), "--since '2h30' is neither"),
    (("--limit", "-1"), "--limit -1 is negative"),
])
def test_bad_arguments_are_one_clear_line(store: dict, args: tuple[str, ...], words: str) -> None:
    done = run_egw("ls", "--data-dir", str(store["data"]), *args)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == f"error: {words}" + lines[0].split(words, 1)[1] and lines[1].startswith("hint: ")
    assert "Traceback" not in done.stderr


@given(st.integers(0, 10_000), st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("w", 604800)]))
def test_durations_count_back_from_now(amount: int, unit: tuple[str, int]) -> None:
    assert parse_since(f"{amount}{unit[0]}", now=1e9) == 1e9 - amount * unit[1]


@given(st.text(max_size=20))
def test_any_since_text_is_a_time_or_a_clear_error(text: str) -> None:
    try:
        assert isinstance(parse_since(text, now=1e9), float)
    except ConfigError as exc:
        assert exc.hint and "\n" not in str(exc).replace(text, "")


@given(st.text(max_size=12), st.text(max_size=12))
def test_printable_names_are_one_line_and_tell_names_apart(a: str, b: str) -> None:
    shown_a, shown_b = printable(a), printable(b)
    assert all(ch.isprintable() for ch in shown_a)
    assert (shown_a == shown_b) == (a == b)


def test_rapidtest_prints_evidence_ids_with_sample_and_item(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    sim = spawn_egw("simulate", "rapidtest", "--kind", "pesticide", "--tests", "2", "--tcp", "0", "--interval", "0.1",
                    "--reply-timeout", "2", "--retry-delay", "0.2")
    url = sim.stdout.readline().strip()
    try:
        done = run_egw("rapidtest", "--port", url, "--count", "2", "--timeout", "60", "--data-dir", str(data))
    finally:
        stop_process(sim)
    assert done.returncode == 0, done.stderr
    results = {i["evidence_id"]: i for i in _ls(data, "--kind", "result")}
    transcripts = {i["evidence_id"] for i in _ls(data)} - set(results)
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        m = re.fullmatch(r"(\S+)  sample (\S+)  (.+): (.+) → (positive|negative|invalid)  \(transcript (\S+)\)", line)
        assert m, line
        assert m.group(1) in results and m.group(6) in transcripts
    assert len({line.split("  ")[1] for line in lines}) == 2  # two samples, told apart


def test_sign_prints_the_record_and_each_item_with_its_evidence_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    document = tmp_path / "record\x07 17.txt"
    document.write_text("on-site inspection record\n")
    reader = spawn_egw("simulate", "fingerprint", "--tcp", "0", "--baud", "0", "--finger", "present", "--quality", "0.9")
    url = reader.stdout.readline().strip()
    try:
        done = run_egw("sign", "--document", str(document), "--signer", "Li Wei\x1b[2J", "--role", "witness",
                       "--fingerprint", url, "--data-dir", str(data), timeout=120)
    finally:
        stop_process(reader)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    listed = {i["evidence_id"]: i for i in _ls(data)}
    record_id = lines[0].split()[0]
    assert listed[record_id]["source_name"].endswith("record.json")
    assert lines[0] == (f"{record_id}  signing record: Li Wei\\x1b[2J (witness) signed record\\x07 17.txt "
                        f"(sha256 {lines[0].rsplit('sha256 ', 1)[1]}")
    items = dict(line.split("  ", 1)[::-1] for line in lines[1:])
    assert {"fingerprint.png", "fingerprint.iso19794-4"} <= set(items)
    assert set(items.values()) | {record_id} == set(listed)
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
