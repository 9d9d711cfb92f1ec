"""``egw custody verify``: recompute the whole custody log and name the first entry that fails."""

from __future__ import annotations

import argparse

from gateway.commands.common import add_data_dir, add_json, open_evidence, out, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("custody", help="the tamper-evident custody log")
    actions = p.add_subparsers(dest="custody_command", metavar="ACTION")
    actions.required = True
    verify = actions.add_parser("verify", help="recompute every entry and every signed tree head")
    add_data_dir(verify)
    add_json(verify)
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    with open_evidence(args, write=False) as service:
        entries, problems = service.custody.verify()
    first = next((p.seq for p in problems if p.seq is not None), None)
    if args.json:
        print_json({"ok": not problems, "entries": entries, "first_bad_entry": first,
                    "problems": [{"seq": p.seq, "message": p.message} for p in problems]})
    elif problems:
        for p in problems:
            print(f"FAIL {p.message}", file=out())
        print(f"custody log NOT verified: first failing entry {first}" if first is not None else "custody log NOT verified", file=out())
    else:
        print(f"custody log verified: {entries} entries", file=out())
    return 1 if problems else 0
