"""Counting a fault-campaign trial: what the devices created against what the platform and the gateway hold,
what the MQTT subscriber saw, whether custody verifies; and the report lines (see bench/faults.py's docstring
for what is counted and why).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._faults_harness import (
    CLOCK_JUMP_S,
    MQTT_LANES,
    REPO,
    TrialReport,
    child_env,
    egw_argv,
)

if TYPE_CHECKING:
    from bench._faults_harness import Child


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def platform_receipts(platform_data: Path) -> list[dict[str, Any]]:
    from simulators.platform.cli import list_received

    for _ in range(20):
        try:
            return list_received(platform_data)
        except sqlite3.OperationalError:  # the platform is mid-write or mid-restart
            time.sleep(0.05)
    return list_received(platform_data)


class VolumeWatch:
    """Polls the recorders' volumes every 100 ms; a recording that vanishes from a still-mounted volume
    must already have a platform receipt for its digest."""

    def __init__(self, volumes: Path, expected: dict[str, str], platform_data: Path, period: float = 0.1) -> None:
        self.volumes = volumes
        self.expected = expected  # "serial/relpath" -> sha256
        self.platform_data = platform_data
        self.period = period
        self.seen: set[str] = set()
        self.deleted: dict[str, bool] = {}  # key -> had a receipt when noticed
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="volume-watch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a watcher error must show up in the report, not kill it
                self.violations.append(f"watcher error {exc!r}")

    def poll(self) -> None:
        if not self.volumes.is_dir():
            return
        for vol in self.volumes.iterdir():
            if vol.name.startswith(".") or not vol.is_dir():
                continue
            try:
                present = {f"{vol.name}/{p.relative_to(vol).as_posix()}" for p in vol.rglob("*") if p.is_file()}
            except OSError:
                continue  # vanished mid-listing: an unplug
            if not vol.is_dir():
                continue  # the volume went away (unplug/eject) while we listed it: not a deletion
            mine = {k for k in self.expected if k.startswith(vol.name + "/")}
            self.seen |= present & mine
            gone = {k for k in mine if k not in present and k not in self.deleted and k in self.seen}
            # Files absent at a (re)mount were deleted during an earlier mount, synced at the yank.
            if gone:
                receipted = {r["sha256"] for r in platform_receipts(self.platform_data)}
                for key in sorted(gone):
                    ok = self.expected[key] in receipted
                    self.deleted[key] = ok
                    if not ok:
                        self.violations.append(f"{key} (sha256 {self.expected[key][:12]}…) deleted from the recorder "
                                               f"with no platform receipt for its digest")


def recorder_originals(media_root: Path) -> dict[str, str]:
    """serial/relpath -> sha256 of every recording on the recorders' own storage (their staging dirs),
    hashed before any docking. The simulators create them in TMPDIR as egw-bodycam-SERIAL-*."""
    out: dict[str, str] = {}
    for media in sorted(media_root.glob("egw-bodycam-*")):
        serial = media.name.split("-")[2]
        for p in sorted(media.rglob("*")):
            if p.is_file():
                out[f"{serial}/{p.relative_to(media).as_posix()}"] = sha256_file(p)
    return out


def gateway_rows(data_dir: Path) -> list[dict[str, Any]]:
    db = data_dir / "state.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT id, sha256, kind, source_path, state, device_id FROM evidence")]
    finally:
        con.close()


def outbox_backlog(data_dir: Path) -> int:
    """MQTT messages the gateway still owes the broker (parked ones excluded: they wait for an operator)."""
    db = data_dir / "state.db"
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute("SELECT COUNT(*) FROM outbox WHERE parked_reason IS NULL").fetchone()[0])
    except sqlite3.OperationalError:  # no outbox table yet
        return 0
    finally:
        con.close()


class TrialCounting:
    """What counting needs of the trial, and the counts (a mixin of bench/faults.py's Trial)."""

    report: TrialReport
    platform_data: Path
    data: Path
    logs: Path
    expected: dict[str, str]
    analyzer: Child
    clock_file: Path | None
    watch: VolumeWatch
    mqtt_seen: list[tuple[str, bytes, int | None]]
    started_wall: float

    def event(self, text: str) -> None:
        raise NotImplementedError

    def count(self) -> None:
        receipts = platform_receipts(self.platform_data)
        by_sha: dict[str, int] = {}
        for rec in receipts:
            by_sha[rec["sha256"]] = by_sha.get(rec["sha256"], 0) + 1
        rows = gateway_rows(self.data)
        self.report.gateway_items = len(rows)
        self.report.gateway_unreceipted = sum(1 for x in rows if x["state"] not in ("receipted", "released"))
        self.count_corrupted(receipts, rows)
        self.count_recordings(by_sha)
        self.count_duplicates(rows, by_sha)
        self.count_results(receipts)
        self.count_mqtt()
        if self.clock_file is not None:
            self.count_clock_stamps()
        self.report.deleted_before_receipt = list(self.watch.violations)
        self.verify_custody()

    def count_corrupted(self, receipts: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        """A blob whose bytes do not hash to its digest, or a recording whose name reached the platform/gateway
        with bytes that differ from the recorder's original."""
        r = self.report
        for rec in receipts:
            blob = Path(rec["blob"])
            if not blob.is_file() or sha256_file(blob) != rec["sha256"]:
                r.corrupted.append(f"platform blob {rec['sha256'][:12]}… does not match its digest")
        for row in rows:
            if row["kind"] in ("video", "audio", "photo", "other", "file") or (row["device_id"] or "").isdigit():
                name = row["source_path"]
                key = next((k for k in self.expected if name.endswith(k.split("/", 1)[1])), None)
                if key is not None and row["sha256"] != self.expected[key]:
                    r.corrupted.append(f"gateway holds {name} with sha256 {row['sha256'][:12]}… ≠ recorder's "
                                       f"{self.expected[key][:12]}…")

    def count_recordings(self, by_sha: dict[str, int]) -> None:
        r = self.report
        for key, sha in sorted(self.expected.items()):
            if sha in by_sha:
                r.delivered += 1
            else:
                r.missing.append(f"recording {key} (sha256 {sha[:12]}…)")

    def count_duplicates(self, rows: list[dict[str, Any]], by_sha: dict[str, int]) -> None:
        r = self.report
        # Two recorders may hold byte-identical files (silent audio): distinct items, same digest. A duplicate is
        # the SAME source (device, path) held as two items, whatever their digests (a rapid-test result re-sent by
        # the instrument differs from the first in its received_at), or more platform receipts than items with
        # that digest.
        same_source: dict[tuple[str, str], list[str]] = {}
        for row in rows:
            same_source.setdefault((row["device_id"] or "", row["source_path"]), []).append(row["sha256"])
        for (device, path), shas in same_source.items():
            if len(shas) > 1:
                r.duplicated.append(f"gateway holds {device}:{path} as {len(shas)} evidence items "
                                    f"({', '.join(sha[:12] + '…' for sha in shas)})")
        gw_items_per_sha: dict[str, int] = {}
        for shas in same_source.values():
            for sha in set(shas):
                gw_items_per_sha[sha] = gw_items_per_sha.get(sha, 0) + 1
        for sha, n in by_sha.items():
            if n > gw_items_per_sha.get(sha, 1):
                r.duplicated.append(f"platform holds {n} receipts for {sha[:12]}… (gateway items with it: "
                                    f"{gw_items_per_sha.get(sha, 0)})")

    def count_results(self, receipts: list[dict[str, Any]]) -> None:
        """What the analyzer says the host acknowledged, against result documents on the platform."""
        r = self.report
        log = Path(self.analyzer.log.name).read_text(errors="replace")
        acked = sorted({line.split("sent ", 1)[1].split(":", 1)[0] for line in log.splitlines() if "rapidtest: sent " in line})
        on_platform: dict[str, set[str]] = {}
        for rec in receipts:
            try:
                doc = json.loads(Path(rec["blob"]).read_bytes()[:1 << 20])
            except (OSError, ValueError):
                continue
            sample = doc.get("sample", {}).get("id") if isinstance(doc, dict) and isinstance(doc.get("sample"), dict) else None
            if sample:
                on_platform.setdefault(sample, set()).add(rec["sha256"])
        r.expected = len(self.expected) + len(acked)
        for sample in acked:
            if sample in on_platform:
                r.delivered += 1
            else:
                r.missing.append(f"rapid-test result {sample} (acknowledged to the analyzer)")

    def verify_custody(self) -> None:
        r = self.report
        custody = subprocess.run(egw_argv("custody", "verify", "--data-dir", str(self.data), "--json"), cwd=REPO, env=child_env(),
                                 capture_output=True, text=True, timeout=120)
        try:
            r.custody_ok = custody.returncode == 0 and bool(json.loads(custody.stdout).get("ok"))
        except ValueError:
            r.custody_ok = False
        r.custody_detail = (custody.stdout.strip() or custody.stderr.strip())[-400:]

    def count_mqtt(self) -> None:
        """Per lane, in arrival order: a redelivery (same message id) is a duplicate; a first arrival with a lower
        egw-seq than one already seen on its lane is out of order (see the module docstring)."""
        r = self.report
        seen_ids: dict[str, int] = {}
        highest: dict[str, int] = {}
        first_seqs: set[tuple[str, int]] = set()
        for topic, payload, seq in list(self.mqtt_seen):
            lane = next((name for name, prefix in MQTT_LANES.items() if topic.split("/", 3)[-1].startswith(prefix)), None)
            if lane is None:
                continue
            try:
                msg = json.loads(payload)
            except ValueError:
                msg = {}
            mid = str(msg.get("messageId") or msg.get("message_id") or hashlib.sha256(payload).hexdigest())
            seen_ids[mid] = seen_ids.get(mid, 0) + 1
            if seen_ids[mid] > 1:
                continue  # a QoS 1 redelivery: a duplicate, not disorder
            if lane == "results":
                r.mqtt_results += 1
            else:
                r.mqtt_evidence += 1
            if seq is None:
                r.mqtt_unsequenced += 1
                continue
            if (lane, seq) in first_seqs:
                continue  # the same outbox row under another message id cannot happen; never count it twice
            first_seqs.add((lane, seq))
            r.mqtt_sequenced += 1
            if seq < highest.get(lane, -1):
                r.mqtt_out_of_order += 1
                if r.mqtt_out_of_order <= 5:
                    self.event(f"out of order on lane {lane}: egw-seq {seq} ({topic}) after {highest[lane]}")
            highest[lane] = max(highest.get(lane, -1), seq)
        r.mqtt_duplicates = sum(n - 1 for n in seen_ids.values())

    def count_clock_stamps(self) -> None:
        """How many gateway records carry the jumped wall clock: proof the jump landed, and that the evidence
        shows it rather than hiding it (custody entries' ``at``, manifests' ``ingested_at``, log lines' ``ts``)."""
        from datetime import datetime

        end = time.time()

        def jumped(ts: float) -> bool:  # outside the trial's real time span by more than half a jump
            return ts < self.started_wall - CLOCK_JUMP_S / 2 or ts > end + CLOCK_JUMP_S / 2

        stamps = {"log_lines": 0, "custody_entries": 0, "manifests": 0}
        for line in Path(self.logs / "gateway.log").read_text(errors="replace").splitlines():
            try:
                ts = float(json.loads(line).get("ts"))
            except (ValueError, TypeError, AttributeError):
                continue
            stamps["log_lines"] += jumped(ts)
        con = sqlite3.connect(f"file:{self.data / 'state.db'}?mode=ro", uri=True, timeout=10)
        try:
            for (at,) in con.execute("SELECT at FROM custody"):
                stamps["custody_entries"] += jumped(float(at))
            for (raw,) in con.execute("SELECT manifest FROM evidence"):
                try:
                    manifest = json.loads(base64.b64decode(json.loads(raw)["payload"]))
                    ingested = datetime.fromisoformat(manifest["ingested_at"].replace("Z", "+00:00")).timestamp()
                except (ValueError, KeyError, TypeError):
                    continue
                stamps["manifests"] += jumped(ingested)
        finally:
            con.close()
        self.report.clock_stamped = stamps


def summary_line(reports: list[TrialReport]) -> str:
    missing = sum(len(r.missing) for r in reports)
    corrupted = sum(len(r.corrupted) for r in reports)
    deleted = sum(len(r.deleted_before_receipt) for r in reports)
    duplicates = sum(len(r.duplicated) + r.mqtt_duplicates for r in reports)
    custody = "ok" if reports and all(r.custody_ok for r in reports) else "FAIL"
    return f"missing={missing} corrupted={corrupted} deleted_before_receipt={deleted} duplicates={duplicates} custody={custody}"


def out_of_order_line(reports: list[TrialReport]) -> str:
    """The ordering check over all trials (the line before the totals' last line)."""
    return (f"out_of_order={sum(r.mqtt_out_of_order for r in reports)} "
            f"sequenced={sum(r.mqtt_sequenced for r in reports)} unsequenced={sum(r.mqtt_unsequenced for r in reports)} "
            f"(MQTT first arrivals older than one already seen on their lane, by egw-seq)")


def print_report(r: TrialReport, out: Any = print) -> None:
    out(f"trial {r.trial} [{','.join(r.faults)}] {r.seconds:.1f} s {'PASS' if r.passed else 'FAIL'}: "
        f"expected={r.expected} delivered={r.delivered} missing={len(r.missing)} duplicated={len(r.duplicated)} "
        f"corrupted={len(r.corrupted)} deleted_before_receipt={len(r.deleted_before_receipt)} "
        f"gateway_items={r.gateway_items} gateway_unreceipted={r.gateway_unreceipted} "
        f"mqtt_results={r.mqtt_results} mqtt_evidence={r.mqtt_evidence} mqtt_duplicates={r.mqtt_duplicates} "
        f"out_of_order={r.mqtt_out_of_order} (of {r.mqtt_sequenced} sequenced, {r.mqtt_unsequenced} unsequenced) "
        f"stranded_mounts={len(r.stranded_mounts)} "
        f"settled={'yes' if r.settled else 'no'} custody={'ok' if r.custody_ok else 'FAIL'}")
    for label, items in (("missing", r.missing), ("corrupted", r.corrupted), ("deleted before receipt", r.deleted_before_receipt),
                         ("duplicated", r.duplicated)):
        for item in items:
            out(f"    {label}: {item}")
    if not r.custody_ok:
        out(f"    custody: {r.custody_detail}")
    if r.clock_stamped:
        out("    clock: gateway records stamped with the jumped time: "
            + " ".join(f"{k}={v}" for k, v in r.clock_stamped.items()))

