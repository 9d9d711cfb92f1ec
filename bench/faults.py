"""Fault campaign: the whole station on loopback under injected faults, ending in a counting report.

``python bench/faults.py [--trials N] [--faults kill,platform,broker,unplug,disk,clock,net] [--seed S]``

Each trial starts a fresh reference platform (fixed port, so it can be killed and restarted
on the same address), a PRIVATE Mosquitto on a free port (never the machine's shared broker),
two simulated body-worn cameras over USB/IP (small real recordings plus one bulk ``--fill-mb``
file each, so faults land mid-copy and mid-upload), a rapid-test analyzer on TCP and
``egw run -c CONFIG`` as a child process. Every selected fault fires once per trial at a
random moment (seeded), is healed, and the system is left to settle until everything the
devices created carries a platform receipt, the recorders are released and the gateway's MQTT
outbox is empty (or a timeout). Then the trial is counted the way
Azure IoT Edge's test coordinator counts: what the devices created (recordings hashed from
the recorders' own storage before docking; results the analyzer says the host acknowledged)
against what the platform holds (by digest) and what the gateway holds.

Why a volume poller: "deleted before receipt" is the one failure a count at the end cannot
see (the file is gone). A thread lists every recorder volume every 100 ms and, whenever a
recording disappears from a volume that is still mounted, checks at that moment whether the
platform holds a receipt for the recording's digest.

The faults: ``kill`` (SIGKILL of ``egw run``, restarted after 0.2-1.5 s), ``platform`` (SIGKILL of the
reference platform, restarted on the same port), ``broker`` (SIGKILL of the private Mosquitto for
``--broker-down`` seconds), ``unplug`` (a recorder yanked off the USB/IP bus mid-copy and replugged),
``disk`` (the gateway's data disk, a small tmpfs, filled for 2-5 s; needs root), ``net`` (the gRPC uplink
through a proxy that delays every chunk 50-300 ms and drops connections, for 3-8 s) and ``clock``:

Clock: the gateway's wall clock jumps by +1 h or -1 h (seeded coin) mid-copy (when a partial blob passes
a random size, as for unplug: a jump on an idle gateway proves little) and jumps back 5-15 s later, as a
bad NTP step or an operator setting the time would do. It is done for real, below Python: every
``egw run`` of a trial with this fault (including the restarts after ``kill``) runs under libfaketime (Debian
``faketime``; LD_PRELOAD of libfaketime.so.1) with ``FAKETIME_TIMESTAMP_FILE`` pointing at a per-trial
file that the harness rewrites atomically (``+0``, ``+3600`` or ``-3600``) and ``FAKETIME_NO_CACHE=1``,
so time(), gettimeofday() and clock_gettime(CLOCK_REALTIME) of the running process (Python, SQLite,
gRPC's BoringSSL alike) move at once. ``FAKETIME_DONT_FAKE_MONOTONIC=1``: a real wall-clock step does
not move CLOCK_MONOTONIC. But libfaketime 0.9.10 (Debian bookworm) still rewrites the deadlines of
monotonic waits (wolfcw/libfaketime#426, #503): every time.sleep() of Python 3.11 fails with EINVAL and
monotonic condition-variable waits (gRPC, the GIL) return at once, even with a zero offset. A real step
does neither, so a small shim (bench/faketime_monotonic_fix.c, built with ``cc`` on first use) is
preloaded in front of libfaketime and sends monotonic sleeps and waits straight to glibc.
``NO_FAKE_STAT=1``: a real step does not rewrite the timestamps of files already on disk, least of all
those on a recorder, whose own clock did not jump. Only the gateway jumps: the platform, the broker and
the devices are other machines. Proof that the jump landed is in the trial's events (gateway log lines,
custody entries and manifests stamped with the jumped time: a jump must be visible in the evidence,
never hidden or "corrected").

TLS under a -1 h jump: the trial's PKI is minutes old (the platform CA, the platform's server and
receipt-signing certificate and the gateway's certificate are issued at trial start, notBefore = issue
time - 5 min), so to a gateway whose clock reads an hour early they are not yet valid. Seen in trials:
new gRPC connections fail their TLS handshake ("certificate is not yet valid"); a receipt that arrives
on a connection opened before the jump is refused as well (its signer certificate is checked at the
gateway's time; seen in early runs). Both errors name the clock. The items stay queued and are delivered
on the uploader's next retry once the clock is back (the platform already holds the bytes: QueryUpload
returns the receipt): a few seconds later with the uploader's RetrySchedule (60 s before it). That is
correct, not a stall: a gateway must not accept a receipt signed with a certificate it cannot show was
valid, and the reference platform's 5-minute backdating of notBefore is kept on purpose (real
certificates are months old; backdating further would only hide this path from the campaign). What the
fault proves is that the gateway resumes by itself once its clock is right, loses nothing and duplicates
nothing.

Out of order: the gateway promises per-lane FIFO on MQTT (gateway/uplink/outbox.py: each lane is sent
in outbox-id order and re-sent from its oldest un-acknowledged message after a reconnect or restart,
so a subscriber may see duplicates but never a newer message of a lane before an older one that it
sees for the first time later). The subscriber can check that because every publish over MQTT 5
carries the message's outbox id as the user property ``egw-seq`` (increasing within a lane, not
contiguous; the payloads' UUIDv7 ids and timestamps cannot be used: they follow the wall clock, which
the clock fault moves backwards). The harness subscribes (MQTT 5) to the ``results`` and ``evidence``
lanes; for each lane it keeps the highest ``egw-seq`` seen, and a message arriving for the first time
(by ``egw-seq``) with a lower ``egw-seq`` than that is counted out of order. Redeliveries of a message
already seen are duplicates (counted by message id), not disorder. Messages the subscriber never saw
(it reconnects after a broker restart with a clean session) are not counted here: missing results
are counted from the platform's receipts. A first arrival without ``egw-seq`` (an MQTT 3.1.1 link)
is counted as unsequenced, so a zero out-of-order count is never vacuous.

The last line is exactly ``missing=M corrupted=C deleted_before_receipt=X duplicates=N custody=ok|FAIL``;
out-of-order counts go on the lines before it. A trial passes (exit status 0 only when all pass) when
missing, corrupted, deleted-before-receipt and out-of-order are 0 and custody verifies; duplicates
(QoS 1 redeliveries, by message id; one source held as two gateway items, or more platform receipts
for a digest than gateway items with it) are counted, not failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._faults_count import (  # noqa: E402
    TrialCounting,
    VolumeWatch,
    gateway_rows,
    out_of_order_line,
    outbox_backlog,
    platform_receipts,
    print_report,
    recorder_originals,
    summary_line,
)
from bench._faults_harness import (  # noqa: E402
    MQTT_LANES,
    Broker,
    Child,
    FaultyProxy,
    TrialOptions,
    TrialReport,
    child_env,
    egw_argv,
    faketime_env,
    free_port,
)
from bench._faults_inject import TrialFaults  # noqa: E402

__all__ = ["ALL_FAULTS", "TrialOptions", "TrialReport", "run_trial", "run_campaign", "summary_line", "out_of_order_line",
           "faketime_env", "main"]

ALL_FAULTS = ("kill", "platform", "broker", "unplug", "disk", "clock", "net")


# ---- one trial --------------------------------------------------------------------------------

class Trial(TrialFaults, TrialCounting):
    """One trial: starts the station, fires the faults (TrialFaults), lets it settle, counts (TrialCounting)."""

    def __init__(self, index: int, root: Path, opts: TrialOptions, rng: random.Random, say: Any) -> None:
        self.index = index
        self.dir = root / f"trial-{index:03d}"
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.opts = opts
        self.rng = rng
        self.say = say
        self.report = TrialReport(index, list(opts.faults))
        self.children: list[Child] = []
        self.platform: Child | None = None
        self.gateway: Child | None = None
        self.broker: Broker | None = None
        self.proxy: FaultyProxy | None = None
        self.mounted_disk: Path | None = None
        self.mqtt_seen: list[tuple[str, bytes, int | None]] = []  # (topic, payload, egw-seq) in arrival order
        self.clock_file: Path | None = None  # libfaketime's FAKETIME_TIMESTAMP_FILE when the clock fault is on
        self.started = time.monotonic()
        self.started_wall = time.time()

    def event(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {text}"
        self.report.events.append(line)
        self.say(f"  trial {self.index}: {line}")

    # -- set-up

    def start_platform(self) -> None:
        self.platform = Child("platform", egw_argv("simulate", "platform", "--data", str(self.platform_data),
                                               "--listen", f"127.0.0.1:{self.platform_port}"), self.logs)
        address = self.platform.line(0)
        self.platform.line(1)
        assert address.endswith(f":{self.platform_port}"), address

    def start_gateway(self) -> None:
        # Every start (the first and each restart after a kill) runs under the trial's clock.
        self.gateway = Child("gateway", egw_argv("run", "-c", str(self.config)), self.logs, env=child_env(**self._clock_env()))
        self.gateway.line(0, timeout=60)

    def _clock_env(self) -> dict[str, str]:
        """libfaketime for the gateway: its wall clock follows ``clock_file``, re-read on every call."""
        if self.clock_file is None:
            return {}
        return faketime_env(timestamp_file=self.clock_file)

    def setup(self) -> None:
        self.platform_data = self.dir / "platform"
        self.platform_port = free_port()
        self.start_platform()
        self._prepare_data_dir()
        address = self._enroll()
        self.broker = Broker(self.dir)
        self.broker.start()
        self._subscribe()
        usbip = self._start_recorders()
        analyzer_url = self._start_analyzer()
        self._write_config(address, usbip, analyzer_url)
        self.watch = VolumeWatch(self.volumes, self.expected, self.platform_data)
        self.watch.start()
        self.start_gateway()
        self.event(f"started: {len(self.expected)} recordings on {self.opts.recorders} recorders, "
                   f"{self.opts.tests} rapid tests; faults {','.join(self.opts.faults) or 'none'}")

    def _prepare_data_dir(self) -> None:
        """The gateway's data directory (on a small tmpfs for the disk fault) and its clock file."""
        if "disk" in self.opts.faults:
            disk = self.dir / "disk"
            disk.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.opts.disk_mb}m", "tmpfs", str(disk)], check=True)
            self.mounted_disk = disk
            self.data = disk / "gw"
        else:
            self.data = self.dir / "gw"
        if "clock" in self.opts.faults:
            self.clock_file = self.dir / "faketime.rc"
            self._set_clock(0)

    def _enroll(self) -> str:
        """Identity and enrolment at the platform; returns the uplink address (the lossy proxy for the net fault)."""
        from gateway.evidence.identity import init_identity
        from gateway.uplink.enroll import enroll
        from simulators.platform.cli import issue_token

        init_identity(self.data, gateway_id=f"gw-faults-{self.index}")
        address = f"127.0.0.1:{self.platform_port}"
        enroll(self.data, address, issue_token(self.platform_data, gateway_id=f"gw-faults-{self.index}")["token"])
        if "net" in self.opts.faults:
            self.proxy = FaultyProxy(self.platform_port, self.rng)
            address = f"127.0.0.1:{self.proxy.port}"
        return address

    def _start_recorders(self) -> str:
        """The simulated body-worn cameras; returns their USB/IP address. Their recordings are hashed here,
        before anything docked."""
        self.volumes = self.dir / "volumes"
        self.simtmp = self.dir / "recorder-storage"
        self.simtmp.mkdir()
        serial_base = 2000001 + self.index * 10 + self.rng.randrange(0, 5)
        recorders = Child("bodycams", egw_argv("simulate", "bodycam", "--listen", "127.0.0.1:0", "--volumes", str(self.volumes),
                                           "--count", str(self.opts.recorders), "--recordings", str(self.opts.recordings),
                                           "--small", "--minutes", "0.05", "--fill-mb", str(self.opts.fill_mb),
                                           "--serial-base", str(serial_base)),
                          self.logs, stdin=True, env=child_env(TMPDIR=str(self.simtmp)))
        self.children.append(recorders)
        self.recorders = recorders
        usbip = recorders.line(0, timeout=60)
        for i in range(self.opts.recorders):
            recorders.line(1 + i)
        self.expected = recorder_originals(self.simtmp)  # before anything docked
        return usbip

    def _start_analyzer(self) -> str:
        analyzer = Child("analyzer", egw_argv("simulate", "rapidtest", "--tests", str(self.opts.tests), "--tcp", "0",
                                          "--interval", "0.5", "--reply-timeout", "2", "--retry-delay", "0.2"), self.logs)
        self.children.append(analyzer)
        self.analyzer = analyzer
        return analyzer.line(0)

    def _write_config(self, address: str, usbip: str, analyzer_url: str) -> None:
        assert self.broker is not None
        self.config = self.dir / "gateway.toml"
        self.config.write_text(f"""
data_dir = "{self.data}"
log_format = "json"
[platform]
address = "{address}"
parallel_uploads = 2
[mqtt]
url = "{self.broker.url}"
[ingest]
reserve_mb = 4
[screen]
listen = ""
[metrics]
listen = ""
[defaults]
inspector_id = "inspector-7"
[[devices]]
kind = "bodycam"
name = "dock"
usbip = "{usbip.removeprefix('usbip://')}"
volumes = "{self.volumes}/{{serial}}"
[[devices]]
kind = "rapidtest"
name = "analyzer"
port = "{analyzer_url}"
""")

    def _subscribe(self) -> None:
        import paho.mqtt.client as mqtt

        assert self.broker is not None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"faults-{os.getpid()}-{self.index}",
                             protocol=mqtt.MQTTv5)  # MQTT 5: the user property egw-seq is what the order check reads

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            if m.retain:
                return
            seq = None
            for key, value in getattr(getattr(m, "properties", None), "UserProperty", None) or []:
                if key == "egw-seq":
                    seq = int(value)
            self.mqtt_seen.append((m.topic, bytes(m.payload), seq))

        client.on_message = on_message
        client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(
            [(f"egw/v1/+/{prefix}#", 1) for prefix in MQTT_LANES.values()])
        client.connect_async("127.0.0.1", self.broker.port)
        client.reconnect_delay_set(0.2, 1)
        client.loop_start()
        self.mqtt = client

    # -- settle

    def pending(self) -> str:
        """Why the trial has not settled yet ("" once it has)."""
        receipted = {r["sha256"] for r in platform_receipts(self.platform_data)}
        left = set(self.expected.values()) - receipted
        if left:
            return f"{len(left)} recording digest(s) without a platform receipt"
        if self.analyzer.proc.poll() is None:
            return "the analyzer is still sending results"
        rows = gateway_rows(self.data)
        busy = sum(1 for r in rows if r["state"] in ("ingested", "queued", "uploading"))
        if busy:
            return f"{busy} gateway item(s) not receipted"
        queued = outbox_backlog(self.data)
        if queued:  # counted only once the outbox is drained: what the subscriber saw is then all it can see
            return f"{queued} MQTT message(s) still in the gateway's outbox"
        on_volumes = sorted({p.relative_to(self.volumes).parts[0] for p in self.volumes.rglob("*") if p.is_file()}) \
            if self.volumes.is_dir() else []
        if on_volumes:
            return "recordings still on the mounted volume of " + ", ".join(on_volumes)
        return ""

    def _mounted_serials(self) -> list[str]:
        if not self.volumes.is_dir():
            return []
        # a mounted volume that still holds recordings (an emptied one is just a recorder waiting to be unplugged)
        return sorted(v.name for v in self.volumes.iterdir() if v.is_dir() and not v.name.startswith(".")
                      and any(p.is_file() for p in v.rglob("*")))

    def settle(self) -> None:
        deadline = time.monotonic() + self.opts.settle_timeout_s
        why, since = "", time.monotonic()
        busids = {line.split()[1].split("=")[1]: line.split()[0] for line in self.recorders.lines if " serial=" in line}
        while time.monotonic() < deadline:
            try:
                now_why = self.pending()
            except sqlite3.Error as exc:
                now_why = f"database busy ({exc})"
            if not now_why:
                self.report.settled = True
                self.event("settled: everything receipted, recorders released, MQTT outbox drained")
                return
            if now_why != why:
                why, since = now_why, time.monotonic()
            elif "kill" in self.opts.faults and time.monotonic() - since > 15 and (mounted := self._mounted_serials()):
                # No progress for 15 s while a recorder sits in mass-storage mode: a recorder that was mounted when
                # egw run was killed is never adopted by the restarted gateway (it is off the USB/IP bus), so what it
                # still holds is neither collected nor released. Counted (stranded_mounts) and healed the way an
                # officer would: re-dock it. Only where egw run was killed: otherwise a mounted recorder is just
                # waiting for its receipts (e.g. refused while the gateway's clock was an hour early).
                for serial in mounted:
                    self.report.stranded_mounts.append(serial)
                    busid = busids.get(serial)
                    if busid:
                        self.recorders.send(f"unplug {busid}")
                        time.sleep(0.5)
                        self.recorders.send(f"replug {busid}")
                        self.event(f"recorder {serial} stranded in mass-storage mode ({why}): re-docked {busid}")
                why = ""
            time.sleep(0.5)
        self.event(f"did not settle within {self.opts.settle_timeout_s:g} s: {why}")

    def teardown(self) -> None:
        try:
            self.watch.stop()
        except AttributeError:
            pass
        if self.gateway is not None:
            self.gateway.stop()
        for child in reversed(self.children):
            child.stop()
        if self.platform is not None:
            self.platform.stop()
        if getattr(self, "mqtt", None) is not None:
            self.mqtt.loop_stop()
            self.mqtt.disconnect()
        if self.broker is not None:
            self.broker.kill()
        if self.proxy is not None:
            self.proxy.close()
        if self.mounted_disk is not None:
            if not self.report.passed:  # keep the gateway's database for the post-mortem
                shutil.copytree(self.data, self.dir / "gw-copy", ignore=shutil.ignore_patterns("blobs"), dirs_exist_ok=True)
            subprocess.run(["umount", "-l", str(self.mounted_disk)], check=False)

    def run(self) -> TrialReport:
        try:
            self.setup()
            self.inject()
            self.settle()
            if self.gateway is not None:
                self.gateway.stop()  # a clean stop, so custody verification reads a quiet log
            self.watch.stop()
            self.count()
        except Exception as exc:  # noqa: BLE001 - a harness failure fails the trial visibly
            self.event(f"harness error: {exc!r}")
            self.report.missing.append(f"trial aborted: {exc!r}")
        finally:
            self.teardown()
            self.report.seconds = round(time.monotonic() - self.started, 1)
        return self.report


def run_trial(index: int, root: Path, opts: TrialOptions, rng: random.Random, say: Any = print) -> TrialReport:
    return Trial(index, root, opts, rng, say).run()


def run_campaign(trials: int, opts: TrialOptions, seed: int, root: Path, say: Any = print) -> list[TrialReport]:
    rng = random.Random(seed)
    reports = []
    for i in range(1, trials + 1):
        report = run_trial(i, root, opts, random.Random(rng.getrandbits(64)), say)
        print_report(report, say)
        reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/faults.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--faults", default=",".join(ALL_FAULTS),
                   help=f"comma-separated, from {','.join(ALL_FAULTS)} (clock: ±1 h jumps of the gateway's wall clock "
                        "under libfaketime, Debian package faketime)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--broker-down", type=float, default=30.0, help="seconds the broker stays down (issue 9: 30)")
    p.add_argument("--fill-mb", type=float, default=48.0, help="bulk file per recorder, so faults land mid-copy")
    p.add_argument("--settle-timeout", type=float, default=150.0)
    p.add_argument("--workdir", type=Path, default=None, help="keep logs and data here (default: a temp dir, removed on pass)")
    args = p.parse_args(argv)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        p.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(ALL_FAULTS)}")
    if "clock" in faults:
        try:
            faketime_env(offset="+0")
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            p.error(f"the clock fault runs the gateway under libfaketime: {exc} (or leave 'clock' out of --faults)")
    if "disk" in faults and os.geteuid() != 0:
        p.error("the disk fault mounts a small tmpfs and needs root; leave 'disk' out of --faults")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="egw-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    opts = TrialOptions(faults=faults, broker_down_s=args.broker_down, fill_mb=args.fill_mb, settle_timeout_s=args.settle_timeout)
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through each trial's teardown: children stopped, tmpfs unmounted

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    print(f"fault campaign: {args.trials} trials, faults {','.join(faults)}, seed {seed}, workdir {root}", flush=True)
    reports = run_campaign(args.trials, opts, seed, root, lambda s: print(s, flush=True))
    passed = sum(r.passed for r in reports)
    print(f"totals: expected={sum(r.expected for r in reports)} delivered={sum(r.delivered for r in reports)} "
          f"gateway_items={sum(r.gateway_items for r in reports)} mqtt_results={sum(r.mqtt_results for r in reports)} "
          f"mqtt_evidence={sum(r.mqtt_evidence for r in reports)} mqtt_duplicates={sum(r.mqtt_duplicates for r in reports)} "
          f"stranded_mounts={sum(len(r.stranded_mounts) for r in reports)} (recorders left mounted by a killed egw run "
          f"and never re-adopted; re-docked by the harness) unsettled={sum(not r.settled for r in reports)}")
    print(out_of_order_line(reports))
    print(f"{passed}/{len(reports)} trials passed in {time.monotonic() - started:.0f} s (seed {seed}); logs in {root}")
    print(summary_line(reports), flush=True)
    ok = passed == len(reports)
    if ok and args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
