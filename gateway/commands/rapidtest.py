"""``egw rapidtest --port URL``: listen to an analyzer in the foreground and record each result."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.commands.common import add_data_dir, add_json, err, open_evidence, out
from gateway.errors import ConfigError, DeviceError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rapidtest", help="receive rapid-test results (ASTM) and record them as signed evidence")
    p.add_argument("--port", required=True, help="serial device, pty path or socket://HOST:PORT")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--inspector", help="inspector id recorded with each result")
    p.add_argument("--site", help="site / location recorded with each result")
    p.add_argument("--count", type=int, help="exit after this many results")
    p.add_argument("--timeout", type=float, help="exit (status 1) after this many seconds without a result")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drivers.rapidtest import RapidTestAnalyzer, RapidTestError, RapidTestPortError
    from gateway.workflows.rapidtest import RapidTestPipeline

    received = 0
    with open_evidence(args) as service:
        pipeline = RapidTestPipeline(service, inspector_id=args.inspector, site=args.site)
        try:
            with RapidTestAnalyzer(args.port, baudrate=args.baud) as analyzer:
                for result in analyzer.results(timeout=args.timeout):
                    recorded = pipeline.record(result)
                    received += 1
                    if args.json:
                        line = json.dumps({"evidence_id": recorded.evidence_id, "duplicate": recorded.duplicate,
                                           **recorded.document}, ensure_ascii=False)
                    else:
                        line = _human_line(recorded, result)
                    out().write(line + "\n")
                    out().flush()
                    if args.count and received >= args.count:
                        analyzer.acknowledge()  # the driver holds the last ACK until the result is safely stored
                        break
        except RapidTestPortError as exc:
            raise ConfigError(str(exc), "check --port (device path, pty or socket://HOST:PORT) and that the analyzer is on") from exc
        except RapidTestError as exc:
            raise DeviceError(f"analyzer at {args.port}: {exc}") from exc
    if args.count and received < args.count:
        err().write(f"only {received} of {args.count} results arrived before the timeout\n")
        return 1
    return 0


def _human_line(recorded: Any, result: Any) -> str:
    """``<evidence id>  sample <id>  <item>: <value> → <judgement>  (transcript <id>)``. The sample id and
    item name come from the instrument: escaped, so two different ones never print the same."""
    from gateway.commands.ls import printable

    item = printable(result.item_name or result.item_code)
    value = f"{printable(result.value)} {printable(result.unit)}".strip() if result.value else "no value"
    again = ", already recorded" if recorded.duplicate else ""
    return (f"{recorded.evidence_id}  sample {printable(result.sample_id)}  {item}: {value} → {result.judgement.value}"
            f"  (transcript {recorded.transcript_evidence_id}{again})")
