"""An exported bundle still verifies years later, after the gateway's certificate has expired.

A platform issues gateway certificates for 397 days; evidence is read in court years after it was
made. ``egw verify`` checks the gateway certificate's validity at the signing time the platform's
receipt proves (its ``receivedAt``; docs/trust.md), not at the day of reading, and never at the
gateway's own claimed ``ingested_at``. Run for real: ``egw verify`` under libfaketime 800 days ahead.
"""

import asyncio
import shutil

from gateway.uplink.uploader import Uploader
from tests.conftest import egw_env, run_egw
from tests.uplink_support import ingest_random, make_gateway, platform_server

FAKETIME = shutil.which("faketime")


def _verify_later(bundle, days: int, *trust: str):
    assert FAKETIME, "Debian's faketime is missing: scripts/test installs it (apt-get install faketime)"
    import subprocess
    import sys

    from tests.conftest import REPO

    return subprocess.run([FAKETIME, f"{days} days", sys.executable, "-m", "gateway", "verify", str(bundle), *trust],
                          cwd=REPO, env=egw_env(), capture_output=True, text=True, timeout=120)


def test_a_receipted_bundle_verifies_after_the_gateway_certificate_expired(tmp_path):
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 40_000, "clip.mp4")
        (outcome,) = asyncio.run(Uploader(gw.data_dir).run_once())
        assert outcome.status == "receipted", outcome.error
    bundle = tmp_path / "bundle"
    run_egw("export", item.evidence_id, str(bundle), "--data-dir", str(gw.data_dir), check=True)
    pinned = ("--data-dir", str(gw.data_dir))  # the platform CA pinned at enrolment is the trust anchor
    today = run_egw("verify", str(bundle), *pinned)
    assert today.returncode == 0, today.stdout

    later = _verify_later(bundle, 800, *pinned)  # the gateway certificate (397 days) has long expired
    assert later.returncode == 0, later.stdout + later.stderr
    assert "VERIFIED" in later.stdout and "FAIL" not in later.stdout
    assert "from receipt receivedAt" in later.stdout


def test_a_manifest_signed_by_a_clock_set_back_verifies_and_says_the_clock_was_wrong(tmp_path):
    """The other side: evidence ingested while the gateway's clock was 2 h behind states a time before
    its certificate existed. That claimed time is not relied on (no receipt: the signing time is
    unproven and the certificate is judged now, when it is valid), so the bundle verifies against the
    anchor the verifier chose, and the report names the discrepancy instead of hiding it."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    assert FAKETIME, "Debian's faketime is missing: scripts/test installs it (apt-get install faketime)"
    data = tmp_path / "gw"
    run_egw("keys", "init", "--data-dir", str(data), check=True)  # certificate valid from 5 minutes ago
    sample = tmp_path / "note.txt"
    sample.write_text("seen at the market\n")
    ingest = subprocess.run([FAKETIME, "-2 hours", sys.executable, "-m", "gateway", "ingest", "--data-dir", str(data),
                             "--json", str(sample)], cwd=REPO, env=egw_env(), capture_output=True, text=True, timeout=120)
    assert ingest.returncode == 0, ingest.stderr
    (item,) = json.loads(ingest.stdout)["items"]
    bundle = tmp_path / "bundle"
    run_egw("export", item["evidence_id"], str(bundle), "--data-dir", str(data), check=True)
    verified = run_egw("verify", str(bundle), "--trust", str(data / "identity" / "gateway.crt"))
    assert verified.returncode == 0, verified.stdout
    assert "outside this certificate's validity" in verified.stdout and "clock was probably wrong" in verified.stdout
    assert "signing time: unproven" in verified.stdout
