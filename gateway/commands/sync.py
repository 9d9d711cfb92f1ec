"""``egw sync --once``: deliver everything queued, report per item, exit non-zero if anything is left."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.commands.common import add_data_dir, add_json, cancelled, data_dir_of, err, getenv, in_service, open_evidence, out, print_json
from gateway.documents.agency import TrustRound, describe
from gateway.errors import ConfigError, VerificationError
from gateway.evidence.state import UNRECEIPTED, EvidenceRow, EvidenceState, State
from gateway.uplink.mqtt_config import PLAINTEXT_FLAG
from gateway.uplink.uploader import Uploader, UploadOutcome, UploadSettings, parse_rate

if TYPE_CHECKING:
    from gateway.evidence.evidence_service import EvidenceService

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sync", help="deliver queued evidence to the platform now")
    parser.add_argument("--once", action="store_true", help="drain the queue and exit (continuous delivery runs inside `egw run`)")
    parser.add_argument("--concurrency", type=int, default=None, help="general upload slots (env EGW_UPLOAD_CONCURRENCY, default 3)")
    parser.add_argument("--express-slots", type=int, default=None, help="slots reserved for flagged/small items (default 1)")
    parser.add_argument("--bandwidth", default=None, help="cap in bytes/s, e.g. 2M, 500k, 1MiB (env EGW_UPLOAD_BANDWIDTH; default none)")
    parser.add_argument("--max-attempts", type=int, default=None, help="attempts per item in this run (default 6)")
    parser.add_argument("--platform", default=None, help="override the platform address stored at enrolment")
    parser.add_argument("--mqtt", default=None, metavar="URL", help="also drain the MQTT outbox to this broker (mqtt:// or mqtts://), waiting for every PUBACK")
    parser.add_argument("--mqtt-timeout", type=float, default=60.0, help="seconds to wait for the broker")
    parser.add_argument(PLAINTEXT_FLAG, dest="allow_plaintext_password", action="store_true",
                        help="accept --mqtt mqtt://user:pass@ to a host that is not loopback (password in clear)")
    parser.add_argument("--no-upload", action="store_true", help="only drain the MQTT outbox")
    parser.add_argument("--trust-services", metavar="URL", default=None,
                        help="the platform's trust services https://HOST:PORT: counter-seal provisionally sealed documents "
                             "and time-stamp tree heads (default: EGW_TRUST_SERVICES, else the one remembered in the data directory)")
    add_data_dir(parser)
    add_json(parser)
    parser.set_defaults(func=run)


def _line(o: UploadOutcome) -> str:
    resumed = [x for x in o.resumed_from if x]
    how = f", resumed at {resumed[-1]}" if resumed else ""
    if o.status == EvidenceState.RECEIPTED:
        return f"receipted {o.evidence_id} sha256 {o.sha256[:16]}… {o.size} B receipt {o.receipt_id} ({o.attempts} attempt(s){how})"
    return f"FAILED    {o.evidence_id} sha256 {o.sha256[:16]}… {o.size} B after {o.attempts} attempt(s){how}: {o.error}"


def run(args: argparse.Namespace) -> int:
    if not args.once:
        raise ConfigError("continuous delivery runs inside `egw run`", "use `egw sync --once` for scripts, cron jobs and tests")
    if in_service():
        return _follow_service_delivery(args)
    try:
        settings = UploadSettings.from_env(
            concurrency=args.concurrency, express_slots=args.express_slots, max_attempts=args.max_attempts,
            bandwidth=parse_rate(args.bandwidth) if args.bandwidth else None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    data_dir = data_dir_of(args)
    outcomes: list[UploadOutcome] = []
    left: list[EvidenceRow] = []
    trust = None
    if not args.no_upload:
        from gateway.uplink.link import load_link
        from gateway.uplink.revocation import refresh_revocation_list
        link = load_link(data_dir, args.platform)
        trust_url = _trust_url(args, data_dir)
        before = _trust(args, trust_url, counter_seal=True, stamp=False)  # counter-sealed copies go out in this run too
        uploader = Uploader(data_dir, settings, link=link,
                            on_outcome=None if args.json else lambda o: print(_line(o), file=out(), flush=True))
        outcomes = asyncio.run(uploader.run_once())
        try:
            refresh_revocation_list(link, args.platform)  # DATA_DIR/identity/crl.pem for bundles and verifiers
        except (ConfigError, VerificationError) as exc:
            print(f"warning: {exc} ({exc.hint})", file=err(), flush=True)
        with State(data_dir) as state:
            left = [r for r in state.all_evidence() if r.state in UNRECEIPTED]
        trust = _trust(args, trust_url, counter_seal=False, stamp=True)  # the newest tree head, receipts included
        if trust is not None and before is not None:
            trust.counter_sealed, trust.still_awaiting = before.counter_sealed, before.still_awaiting
            trust.problems[:0] = before.problems
    drain = None
    if args.mqtt:
        from gateway.uplink.mqtt_link import drain_outbox

        drain = drain_outbox(data_dir, args.mqtt, timeout=args.mqtt_timeout,
                             allow_plaintext_password=args.allow_plaintext_password)
    if args.json:
        print_json({"outcomes": [o.__dict__ for o in outcomes],
                    "undelivered": [{"evidence_id": r.id, "state": r.state, "last_error": r.last_error} for r in left],
                    "mqtt": None if drain is None else {k: getattr(drain, k) for k in ("ok", "delivered", "remaining", "parked", "error", "link_state")},
                    "trust": None if trust is None else describe(trust)})
    else:
        if not args.no_upload:
            done = sum(o.status == EvidenceState.RECEIPTED for o in outcomes)
            print(f"{done} receipted, {len(outcomes) - done} failed, {len(left)} left undelivered", file=out())
        if trust is not None:
            _print_trust(trust)
        if drain is not None:
            print(f"mqtt: {drain.delivered} delivered, {drain.remaining} left, {drain.parked} refused by the broker"
                  + (f" ({drain.error})" if drain.error else ""), file=out())
    failed = False
    if left:
        print(f"error: {len(left)} item(s) not delivered; see last_error above or in `egw status`", file=err())
        failed = True
    if trust is not None and trust.still_awaiting:
        print(f"error: {trust.still_awaiting} document(s) still await the agency's counter-seal: "
              + ("; ".join(trust.problems) or "the platform's trust services did not answer"), file=err())
        failed = True
    if drain is not None and not drain.ok:
        print(f"error: the MQTT outbox is not empty ({drain.remaining} left, {drain.parked} parked): {drain.error or drain.link_state}", file=err())
        failed = True
    return 1 if failed else 0


def _trust_url(args: argparse.Namespace, data_dir: Path) -> str | None:
    from gateway.documents.agency import TRUST_SERVICES_SETTING, remember_trust_services, trust_services_url

    url = trust_services_url(data_dir, args.trust_services, getenv(TRUST_SERVICES_SETTING))
    if args.trust_services and url:
        remember_trust_services(data_dir, url)
    return url


def _trust(args: argparse.Namespace, url: str | None, *, counter_seal: bool, stamp: bool) -> TrustRound | None:
    """One trust round (gateway/documents/agency.py), or None when there is nothing to do it with."""
    from gateway.documents.agency import run_trust_round
    from gateway.evidence import counter_seals

    with open_evidence(args) as service:
        with service.state.lock:
            owed = bool(counter_seals.awaiting(service.state.db, 1))
        if url is None and not owed or not service.identity.enrolled:
            return None
        return run_trust_round(service, url, counter_seal=counter_seal, stamp=stamp)


def _print_trust(trust: TrustRound) -> None:
    for provisional, sealed in trust.counter_sealed.items():
        print(f"counter-sealed {provisional} -> {sealed}", file=out())
    print(f"trust: {len(trust.counter_sealed)} counter-sealed, {trust.still_awaiting} awaiting the agency seal, "
          f"{trust.heads_stamped} tree head(s) time-stamped", file=out())
    for problem in trust.problems:
        print(f"warning: {problem}", file=err())


STALL_S = 30.0  # no pending item moved for this long: report them instead of waiting on


def _pending(service: EvidenceService) -> dict[str, tuple[str, int, str, int, str | None]]:
    """id → (state, upload offset, sha256, size, last error) of every item not yet receipted (no manifests:
    this is polled)."""
    return service.state.unreceipted_progress()


def _follow_service_delivery(args: argparse.Namespace) -> int:
    """``egw sync --once`` inside ``egw run``: the service's own uploader delivers continuously (a second
    uploader on the same queue would fight it for items), so this follows it until the queue is empty,
    or nothing moved for ``STALL_S``, or the client pressed Ctrl-C — and reports like the local run."""
    if args.mqtt:
        raise ConfigError("egw run's MQTT link drains the outbox of this data directory itself",
                          "drop --mqtt while egw run serves this data directory (`egw status` shows the outbox)")
    delivered: list[dict[str, object]] = []
    with open_evidence(args) as service:
        if not args.no_upload:
            from gateway.uplink.link import load_link

            load_link(service.data_dir, args.platform)  # not enrolled: say so now, as the local run does
        before = _pending(service)
        moved_at = time.monotonic()
        while before and not cancelled() and time.monotonic() - moved_at < STALL_S:
            time.sleep(0.2)
            now = _pending(service)
            if now != before:
                moved_at = time.monotonic()
            for eid in before.keys() - now.keys():  # left the queue: only by a receipt
                _, _, sha256, size, _ = before[eid]
                delivered.append({"evidence_id": eid, "status": EvidenceState.RECEIPTED.value, "sha256": sha256, "size": size})
                if not args.json:
                    print(f"receipted {eid} sha256 {sha256[:16]}… {size} B (by egw run)", file=out(), flush=True)
            before = now
    left = [{"evidence_id": eid, "state": v[0], "last_error": v[4]} for eid, v in before.items()]
    if args.json:
        print_json({"outcomes": delivered, "undelivered": left, "mqtt": None})
    elif not args.no_upload:
        print(f"{len(delivered)} receipted, {len(left)} left undelivered (delivered by egw run)", file=out())
    if left:
        print(f"error: {len(left)} item(s) not delivered; `egw status` shows the oldest and its last error", file=err())
        return 1
    return 0
