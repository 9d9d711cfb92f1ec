"""``egw mqtt …``: look at and operate the MQTT outbox (debugging and operator repair).

    egw mqtt status [--json]               link state, last error, backlog per lane, alarms
    egw mqtt drain --mqtt URL [--timeout]  send everything queued, wait for every PUBACK (exit 1 if anything is left)
    egw mqtt requeue                       put messages the broker refused (parked) back in line
    egw mqtt publish-test --mqtt URL       queue one device-state test message and drain it
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gateway.commands.common import add_data_dir, add_json, data_dir_of, print_json
from gateway.errors import ConfigError
from gateway.evidence.identity import load_identity
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from gateway.uplink.mqtt_config import PLAINTEXT_FLAG
from gateway.uplink.mqtt_link import drain_outbox
from protos.egw.v1 import events_pb2

__all__ = ["register", "TEST_DEVICE"]

TEST_DEVICE = "egw-test"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("mqtt", help="inspect and drain the MQTT outbox")
    actions = parser.add_subparsers(dest="mqtt_action", metavar="ACTION")
    actions.required = True

    status = actions.add_parser("status", help="link state, last error, outbox backlog, alarms")
    add_data_dir(status)
    add_json(status)
    status.set_defaults(func=_status)

    drain = actions.add_parser("drain", help="send everything queued and wait for every PUBACK")
    add_data_dir(drain)
    add_json(drain)
    drain.add_argument("--mqtt", required=True, help="broker URL, mqtt://host:1883 or mqtts://host:8883")
    drain.add_argument("--timeout", type=float, default=60.0)
    _add_plaintext_flag(drain)
    drain.set_defaults(func=_drain)

    requeue = actions.add_parser("requeue", help="put messages the broker refused back in line")
    add_data_dir(requeue)
    requeue.set_defaults(func=_requeue)

    test = actions.add_parser("publish-test", help="send one test device state through the outbox, then clear it from "
                                                   "the broker (it is retained), and drain")
    add_data_dir(test)
    test.add_argument("--mqtt", required=True)
    test.add_argument("--timeout", type=float, default=10.0)
    _add_plaintext_flag(test)
    test.set_defaults(func=_publish_test)


def _add_plaintext_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(PLAINTEXT_FLAG, dest="allow_plaintext_password", action="store_true",
                        help="accept mqtt://user:pass@ to a host that is not loopback (the password crosses the network in clear)")


def _gateway_data_dir(args: argparse.Namespace) -> Path:
    """The data directory, refused when it is not one: a typo must not read as "nothing queued" (or,
    for requeue, create an empty database in a new directory)."""
    data_dir = data_dir_of(args)
    if not (data_dir / "state.db").is_file() and not (data_dir / "identity").is_dir():
        raise ConfigError(f"{data_dir} is not a gateway data directory (no state.db, no identity/)",
                          "pass --data-dir (or set EGW_DATA_DIR) to the directory `egw keys init` created")
    return data_dir


def _status(args: argparse.Namespace) -> int:
    status = ob.mqtt_status(_gateway_data_dir(args))
    if args.json:
        print_json(status)
        return 0
    link, box = status["link"], status["outbox"]
    print(f"mqtt link: {link.get('state')}  {link.get('broker') or ''}  {link.get('detail') or ''}".rstrip())
    if link.get("last_error"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(link["last_error_at"])) if link.get("last_error_at") else "?"
        print(f"last error ({when}): {link['last_error']}")
    lanes = ", ".join(f"{k} {v}" for k, v in box["by_lane"].items())
    print(f"outbox: {box['count']} message(s), {box['bytes']} bytes of {box['quota_bytes']} ({lanes}); parked {box['parked']}"
          + (f"; oldest {box['oldest_age_s']} s" if box["oldest_age_s"] is not None else ""))
    for alarm in status["alarms"]:
        print(f"ALARM: {alarm}")
    return 0


def _drain(args: argparse.Namespace) -> int:
    report = drain_outbox(data_dir_of(args), args.mqtt, args.timeout, allow_plaintext_password=args.allow_plaintext_password)
    if args.json:
        print_json(report.__dict__)
    else:
        print(f"delivered {report.delivered}, remaining {report.remaining} (parked {report.parked}) in {report.elapsed_s} s; "
              f"link {report.link_state}")
        if report.error:
            print(f"error: {report.error}")
    return 0 if report.ok else 1


def _requeue(args: argparse.Namespace) -> int:
    with State(_gateway_data_dir(args)) as state, state.transaction() as db:
        n = ob.requeue_parked(db)
    print(f"{n} parked message(s) back in line; run `egw mqtt drain` or let the service send them")
    return 0


def _publish_test(args: argparse.Namespace) -> int:
    """One test device state through the outbox, then the empty retained message that deletes it again.
    Device states are retained, so without the second the broker would hand a fake device to every future
    subscriber. Two drains: the outbox keeps only the newest queued state per device topic, so the clear
    queued beside the state would replace it before it was ever sent."""
    data_dir = data_dir_of(args)
    gateway_id = load_identity(data_dir).gateway_id
    topic = f"devices/{TEST_DEVICE}/state"
    with ob.Outbox(data_dir, gateway_id) as box:
        msg = events_pb2.DeviceState(device_id=TEST_DEVICE, kind="test", state="docked", detail="egw mqtt publish-test")
        msg.at.GetCurrentTime()
        box.put_device_state(msg)
    quiet = argparse.Namespace(**{**vars(args), "json": False})
    sent = _drain(quiet)
    with ob.Outbox(data_dir, gateway_id) as box:  # queued even when the first drain failed: it goes out with it
        box.put("device", topic, b"", retain=True)
    if sent != 0:
        print(f"the retained test state on {topic} is cleared the next time the outbox drains")
        return sent
    cleared = _drain(quiet)
    if cleared == 0:
        print(f"test device state sent and cleared from the broker ({topic} retains nothing)")
    return cleared
