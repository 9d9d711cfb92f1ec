"""``egw status``: what the operator needs at a glance, from the local state."""

from __future__ import annotations

import argparse

from gateway.commands.common import add_data_dir, add_json, data_dir_of, open_evidence, out, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="counts per state, disk use, oldest undelivered item")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def run(args: argparse.Namespace) -> int:
    from gateway.uplink.outbox import mqtt_status

    with open_evidence(args, write=False) as service:
        info = service.status()
    # The MQTT link's state belongs to the uplink, not the evidence core; only the operator's view joins them.
    info["mqtt"] = mqtt_status(data_dir_of(args))
    if args.json:
        print_json(info)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out())
    console.print(f"gateway [bold]{info['gateway_id']}[/] ({'enrolled' if info['enrolled'] else 'not enrolled'}), data {info['data_dir']}")
    table = Table("state", "items")
    for state, count in info["counts"].items():
        table.add_row(state, str(count))
    console.print(table)
    console.print(f"store {_human(info['disk']['blob_bytes'])}, free {_human(info['disk']['free_bytes'])}, custody entries {info['custody_entries']}")
    mqtt = info.get("mqtt") or {}
    link, box = mqtt.get("link") or {}, mqtt.get("outbox") or {}
    if link.get("state") not in (None, "never-connected") or box.get("count"):
        console.print(f"mqtt: {link.get('state') or 'never connected'} {link.get('broker') or ''}, outbox {box.get('count', 0)} message(s)"
                      + (f", last error: {link['last_error']}" if link.get("last_error") else ""))
    for alarm in mqtt.get("alarms") or []:
        console.print(f"[red]alarm: {alarm}[/]")
    oldest = info["oldest_unreceipted"]
    if oldest:
        console.print(f"oldest unreceipted: {oldest['evidence_id']} ({oldest['state']}, {oldest['age_s']:.0f} s old)"
                      + (f" last error: {oldest['last_error']}" if oldest["last_error"] else ""))
    else:
        console.print("everything is receipted")
    return 0
