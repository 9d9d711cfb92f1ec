"""``egw terminal pair|ls|revoke``: the mobile terminals paired with this station.

``pair`` issues a one-time pairing code (the station screen's ``/pairing`` page does the same with a QR
code); ``revoke`` refuses a lost terminal at the TLS layer from then on. Both are custody events under
the officer's id and both write, so with ``egw run`` serving the data directory they run inside it and
take effect at once. ``ls`` only reads and runs beside the service.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from gateway.commands.common import add_data_dir, add_json, open_evidence, out

__all__ = ["register", "WRITING_ACTIONS"]

WRITING_ACTIONS = frozenset({"pair", "revoke"})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("terminal", help="mobile terminals paired with this station: pair, ls, revoke")
    actions = parser.add_subparsers(dest="terminal_command", metavar="ACTION")
    actions.required = True
    pair = actions.add_parser("pair", help="issue a one-time pairing code (valid 5 minutes, one terminal)")
    pair.add_argument("--officer", help="bind the code to this officer (else the terminal names its officer)")
    pair.add_argument("--by", default="egw terminal pair", help="who issued the code (recorded with it)")
    pair.add_argument("--url", help="the pairing address to put in the QR payload (the service prints its own at start)")
    add_data_dir(pair)
    add_json(pair)
    pair.set_defaults(func=run_pair)
    ls = actions.add_parser("ls", help="list paired terminals (revoked ones included)")
    add_data_dir(ls)
    add_json(ls)
    ls.set_defaults(func=run_ls)
    revoke = actions.add_parser("revoke", help="revoke a terminal: refused at the TLS layer from now on")
    revoke.add_argument("terminal_id", help="the terminal's id, as `egw terminal ls` shows it")
    revoke.add_argument("--by", required=True, help="the officer or administrator revoking it (recorded in custody)")
    revoke.add_argument("--reason", default="lost", help="why (recorded in custody); default: lost")
    add_data_dir(revoke)
    add_json(revoke)
    revoke.set_defaults(func=run_revoke)


def run_pair(args: argparse.Namespace) -> int:
    from gateway.terminal import registry
    from gateway.terminal.ca import TerminalCA
    from gateway.terminal.pairing_page import qr_text
    from gateway.terminal.server import pairing_payload

    with open_evidence(args) as service:
        ca = TerminalCA(service.data_dir, service.identity.gateway_id)
        code = registry.offer_pairing(service, officer_id=args.officer, issued_by=args.by)
        offer = pairing_payload(args.url or "", code, ca.station_fingerprint, service.identity.gateway_id)
    if args.json:
        print(json.dumps(offer), file=out())
        return 0
    print(qr_text(offer["uri"]), file=out())
    print(f"pairing code: {code} (valid {registry.PAIRING_TTL_S / 60:.0f} minutes, one terminal)", file=out())
    print(f"station certificate SHA-256: {offer['station_sha256']}", file=out())
    return 0


def run_ls(args: argparse.Namespace) -> int:
    from gateway.terminal import registry

    with open_evidence(args, write=False) as service:
        terminals = registry.list_terminals(service)
    if args.json:
        print(json.dumps([t.__dict__ for t in terminals]), file=out())
        return 0
    if not terminals:
        print("no terminal is paired with this station", file=out())
        return 0
    for t in terminals:
        state = f"REVOKED {_when(t.revoked_at)} by {t.revoked_by} ({t.revoke_reason})" if t.revoked_at else "active"
        print(f"{t.id}  officer {t.officer_id}  paired {_when(t.paired_at)}  {state}  {t.label or ''}".rstrip(), file=out())
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from gateway.terminal import registry

    with open_evidence(args) as service:
        try:
            record = registry.revoke(service, args.terminal_id, by=args.by, reason=args.reason)
        finally:
            service.sign_tree_head()
    if args.json:
        print(json.dumps(record.__dict__), file=out())
    else:
        print(f"terminal {record.id} (officer {record.officer_id}) revoked {_when(record.revoked_at)}; "
              "it is refused from now on", file=out())
    return 0


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
