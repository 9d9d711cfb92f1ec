"""What a soak measures and how it is judged: its options, the samples, and the result with its report.

Kept apart from ``bench/soak.py`` (which runs the station and drives the devices) so the judging
rules read on their own.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import load_average

@dataclass
class SoakOptions:
    minutes: float = 30.0
    recorders: int = 3
    replug_every: float = 60.0
    record: int = 2
    recordings: int = 2
    analyzer_every: float = 2.0
    poll_every: float = 10.0
    sample_every: float = 2.0
    settle: float = 180.0
    fd_noise: int = 3
    thread_noise: int = 2
    rss_mb_per_h: float = 10.0  # the bound: under 10 MB/h on a station that runs for hours


FLAG_HELP = {
    "minutes": "how long the recorders are replugged (start-up and settle come on top)",
    "recorders": "simulated body-worn cameras on the USB/IP server",
    "replug_every": "seconds between two replugs of one recorder (the recorders take turns)",
    "record": "new recordings each recorder makes while unplugged (0: none)",
    "recordings": "recordings on each recorder at the start",
    "analyzer_every": "seconds between two analyzer results",
    "poll_every": "seconds between two rounds of egw status --json / egw ls --json",
    "sample_every": "seconds between two /proc samples of the gateway",
    "settle": "seconds the gateway gets after the churn to deliver what is left",
    "fd_noise": "fd drift (last quarter minus first) tolerated",
    "thread_noise": "thread drift tolerated",
    "rss_mb_per_h": "RSS growth tolerated over the second half (judged for runs of 10 minutes or more)",
}


@dataclass
class Sample:
    at: float  # seconds since the churn started
    fds: int
    threads: int
    rss_kib: int


@dataclass
class SoakResult:
    options: SoakOptions
    replugs: int = 0
    replugs_docked: int = 0
    undocked: list[str] = field(default_factory=list)  # "1-2 at 75 s" for each replug that never mounted
    max_cards_per_recorder: int = 0
    cards_left: int = 0  # bodycam cards not "undocked" once every recorder is unplugged at the end
    times_doubled: int = 0  # how often a recorder went from one card to several
    card_examples: list[str] = field(default_factory=list)  # the cards a recorder showed as, when more than one
    card_bytes_over: dict[tuple[str, int], str] = field(default_factory=dict)  # (serial, bytes on it) -> what a card said
    recordings_made: int = 0
    recordings_stored: int = 0
    items: int = 0  # evidence rows in the gateway at the end
    items_receipted: int = 0
    platform_items: int = 0
    analyzer_results: int = 0
    samples: list[Sample] = field(default_factory=list)
    simulator_fds: list[int] = field(default_factory=list)  # the recorders' process: its unplug path must not leak either
    polls: int = 0
    poll_failures: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workdir: Path | None = None

    # ---- derived ------------------------------------------------------------------------------
    @property
    def items_made(self) -> int:
        """Everything the devices made: stored items plus recordings that never became evidence."""
        return self.items + max(0, self.recordings_made - self.recordings_stored)

    def _quarters(self, attr: str) -> tuple[float, float]:
        values = [getattr(s, attr) for s in self.samples]
        if len(values) < 4:
            return (float(values[0]), float(values[-1])) if values else (0.0, 0.0)
        quarter = max(1, len(values) // 4)
        return statistics.median(values[:quarter]), statistics.median(values[-quarter:])

    @property
    def fd_drift(self) -> float:
        first, last = self._quarters("fds")
        return last - first

    @property
    def thread_drift(self) -> float:
        first, last = self._quarters("threads")
        return last - first

    @property
    def rss_mb_per_h(self) -> float:
        """Least-squares slope of RSS over the second half of the run (the first half warms caches up)."""
        half = self.samples[len(self.samples) // 2:]
        if len(half) < 3 or half[-1].at - half[0].at < 1:
            return 0.0
        xs, ys = [s.at for s in half], [s.rss_kib / 1024 for s in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        return slope * 3600

    def problems(self) -> list[str]:
        o = self.options
        out = []
        if self.replugs_docked != self.replugs:
            out.append(f"{self.replugs - self.replugs_docked} of {self.replugs} replugs did not dock: "
                       + ", ".join(self.undocked[:5]))
        if self.max_cards_per_recorder > 1:
            out.append(f"{self.times_doubled} time(s) a recorder showed as several cards (at most "
                       f"{self.max_cards_per_recorder}) on the station screen, e.g. "
                       f"{next(e for e in self.card_examples if not e.startswith('left at the end'))}")
        if self.cards_left:
            out.append(f"{self.cards_left} bodycam card(s) did not say undocked after every recorder was unplugged: "
                       + "; ".join(e for e in self.card_examples if e.startswith("left at the end"))[:400])
        if self.card_bytes_over:
            out.append(f"in {len(self.card_bytes_over)} dock(s) a card showed more bytes copied than its recorder "
                       f"holds, e.g. {next(iter(self.card_bytes_over.values()))}")
        if self.items_receipted != self.items_made or self.platform_items != self.items:
            out.append(f"{self.items_receipted} of {self.items_made} items receipted "
                       f"({self.recordings_stored} of {self.recordings_made} recordings stored, platform holds "
                       f"{self.platform_items} of {self.items})")
        if self.fd_drift > o.fd_noise:
            out.append(f"file descriptors drifted by {self.fd_drift:+.0f} (noise allowed {o.fd_noise})")
        if self.simulator_fd_drift > o.fd_noise:
            out.append(f"the recorder simulator's file descriptors drifted by {self.simulator_fd_drift:+.0f}")
        if self.thread_drift > o.thread_noise:
            out.append(f"threads drifted by {self.thread_drift:+.0f} (noise allowed {o.thread_noise})")
        if o.minutes >= 10 and self.rss_mb_per_h > o.rss_mb_per_h:
            out.append(f"RSS grew {self.rss_mb_per_h:.1f} MB/h (limit {o.rss_mb_per_h:g})")
        if self.poll_failures:
            out.append(f"{len(self.poll_failures)} of {self.polls} read-only commands failed: {self.poll_failures[0]}")
        if self.tracebacks:
            out.append(f"{len(self.tracebacks)} traceback(s) in the logs: {self.tracebacks[0]}")
        return out

    def report_lines(self) -> list[str]:
        first_fd, last_fd = self._quarters("fds")
        first_th, last_th = self._quarters("threads")
        rss = [s.rss_kib / 1024 for s in self.samples] or [0.0]
        return [
            f"soak {self.options.minutes:g} min, {self.options.recorders} recorders replugged every "
            f"{self.options.replug_every:g} s, analyzer every {self.options.analyzer_every:g} s "
            f"({self.seconds:.0f} s in all; logs in {self.workdir})",
            f"replugs docked        {self.replugs_docked} / {self.replugs}",
            f"cards per recorder    at most {self.max_cards_per_recorder} at once ({self.times_doubled} time(s) more than one); not undocked at the end: {self.cards_left}; "
            f"byte counter over the total in {len(self.card_bytes_over)} dock(s)",
            f"items receipted       {self.items_receipted} / {self.items_made} made "
            f"(recordings {self.recordings_stored} / {self.recordings_made}, analyzer results {self.analyzer_results}, "
            f"platform holds {self.platform_items})",
            f"fds                   {first_fd:.0f} → {last_fd:.0f} (drift {self.fd_drift:+.0f}, max {max(s.fds for s in self.samples) if self.samples else 0})",
            f"simulator fds         {self._simulator_fds()}",
            f"threads               {first_th:.0f} → {last_th:.0f} (drift {self.thread_drift:+.0f})",
            f"RSS                   {rss[0]:.0f} → {rss[-1]:.0f} MB (max {max(rss):.0f}), growth {self.rss_mb_per_h:+.1f} MB/h over the second half",
            f"read-only commands    {self.polls - len(self.poll_failures)} / {self.polls} ok",
            f"tracebacks            {len(self.tracebacks)}" + "".join(f"\n  {t}" for t in self.tracebacks[:5]),
        ]

    @property
    def simulator_fd_drift(self) -> float:
        fds = self.simulator_fds
        if len(fds) < 4:
            return 0.0
        quarter = len(fds) // 4
        return statistics.median(fds[-quarter:]) - statistics.median(fds[:quarter])

    def _simulator_fds(self) -> str:
        fds = self.simulator_fds
        if not fds:
            return "not sampled"
        quarter = max(1, len(fds) // 4)
        return f"{statistics.median(fds[:quarter]):.0f} → {statistics.median(fds[-quarter:]):.0f} (max {max(fds)})"

    def summary_line(self) -> str:
        problems = self.problems()
        verdict = "ok" if not problems else f"FAILED ({len(problems)} problem(s))"
        return (f"soak {self.options.minutes:g} min: replugs {self.replugs_docked}/{self.replugs}, "
                f"receipted {self.items_receipted}/{self.items_made}, fd drift {self.fd_drift:+.0f}, "
                f"thread drift {self.thread_drift:+.0f}, RSS {self.rss_mb_per_h:+.1f} MB/h, "
                f"max cards/recorder {self.max_cards_per_recorder}, tracebacks {len(self.tracebacks)} — {verdict} "
                f"(load {load_average()})")


# ---- processes ----------------------------------------------------------------------------------
