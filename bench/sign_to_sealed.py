"""From "party signed" to "sealed PDF on disk": ``python -m bench.sign_to_sealed [--runs 20]``.

Issue #16's goal: p50 under 1.5 s, time-stamps included. Setup (not timed): the reference platform with its
trust services as a child process (``egw simulate platform --agency-unit``), an enrolled gateway, the pad
and fingerprint simulators, one draft of the on-site record and the party's signing session on it (``egw
sign``). Each timed run is what follows the signature: ``egw record new --signing … --signed-draft …``
(in this process, as ``egw run`` runs it for a client): render the PDF/A-3b with the signature, fingerprint
and signing record embedded, seal it (profile, remote signature with its signature time-stamp, DSS, document
time-stamp: PAdES B-LTA) and store it as evidence (manifest, custody, tree head). Also measured: one cold
``egw record new`` in a fresh interpreter, and the document's size unsealed and sealed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.cli import main as egw_main
from gateway.evidence.identity import init_identity
from gateway.uplink.enroll import enroll
from simulators.platform.cli import issue_token
from tests.conftest import run_egw
from tests.platform_process import PlatformProcess
from tests.test_documents import FORM, _simulators, _stop


def _egw_here(*args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = egw_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _signed_draft(root: Path, data_dir: Path) -> tuple[Path, str]:
    draft = root / "draft.pdf"
    code, _, err = _egw_here("record", "draft", "--template", "onsite", "--form", root / "form.toml", "-o", draft, "--data-dir", data_dir)
    assert code == 0, err
    (finger, finger_url), (pad, pad_url) = _simulators()
    try:
        signed = run_egw("sign", "--document", str(draft), "--signer", "王小明", "--signpad", pad_url, "--fingerprint", finger_url,
                         "--data-dir", str(data_dir), "--json", timeout=120)
    finally:
        _stop(pad, finger)
    assert signed.returncode == 0, signed.stderr
    return draft, str(json.loads(signed.stdout)["evidence_id"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sign_to_sealed")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        platform = PlatformProcess(root / "platform").start()
        try:
            data_dir = root / "gw"
            init_identity(data_dir, "gw-bench")
            enroll(data_dir, platform.address, issue_token(platform.data, gateway_id="gw-bench")["token"])
            (root / "form.toml").write_text(FORM, encoding="utf-8")
            draft, signing = _signed_draft(root, data_dir)
            common = ("--template", "onsite", "--form", root / "form.toml", "--signing", signing, "--signed-draft", draft,
                      "--data-dir", data_dir, "--trust-services", platform.trust_url, "--json")
            times, made = [], {}
            for i in range(args.runs):
                start = time.perf_counter()
                code, out, err = _egw_here("record", "new", *common, "-o", root / f"record-{i}.pdf")
                times.append(time.perf_counter() - start)
                assert code == 0, err
                made = json.loads(out)
                assert made["seal"] == "agency", made
            start = time.perf_counter()
            cold = subprocess.run([sys.executable, "-m", "gateway", "record", "new", *map(str, common), "-o", str(root / "cold.pdf")],
                                  capture_output=True, text=True, timeout=120)
            cold_s = time.perf_counter() - start
            assert cold.returncode == 0, cold.stderr
            unsealed = (root / f"record-{args.runs - 1}.pdf").stat().st_size
        finally:
            platform.stop()
        result = {
            "runs": args.runs, "p50_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
            "first_s": round(times[0], 3), "cold_cli_s": round(cold_s, 3),
            "unsealed_bytes": unsealed, "sealed_bytes": made["size"], "seal_added_bytes": made["size"] - unsealed,
            "embedded": sorted(made["embedded"]),
        }
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
