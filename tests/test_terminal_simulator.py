"""``egw simulate terminal`` (#19, item 6): pairs from the QR URI, uploads photos and a short video with
its own tus client, files them in a case, follows results; JSON lines a script can read. Then the API
calls the simulator does not make: the station view, the officer's evidence, a strip photo read."""

from __future__ import annotations

import json

from simulators.terminal.client import TerminalClient
from tests.conftest import run_egw
from tests.terminal_support import init_data, offer_code, station, write_config


def test_simulated_terminal_pairs_uploads_files_a_case_and_follows(tmp_path):
    data = init_data(tmp_path)
    with station(write_config(tmp_path, data)) as (_, ready):
        uri = offer_code(data, ready["terminal_pairing"])
        run = run_egw("simulate", "terminal", "--pair", uri, "--officer", "400001", "--dir", str(tmp_path / "t"),
                      "--photos", "2", "--video-seconds", "1", "--case", "B-9", "--follow", "1", timeout=120)
        assert run.returncode == 0, run.stderr
        events = [json.loads(line) for line in run.stdout.splitlines()]
        kinds = [e["event"] for e in events]
        assert kinds[0] == "paired" and kinds.count("uploaded") == 3 and "case" in kinds and "results" in kinds and kinds[-1] == "done"
        uploaded = [e["evidence_id"] for e in events if e["event"] == "uploaded"]
        case = next(e for e in events if e["event"] == "case")
        assert case["status"] == 201 and sorted(i["evidence_id"] for i in case["case"]["items"]) == sorted(uploaded)
        again = run_egw("simulate", "terminal", "--dir", str(tmp_path / "t"), "--photos", "1", timeout=60)  # same pairing
        assert again.returncode == 0 and '"uploaded"' in again.stdout, again.stderr

        client = TerminalClient(tmp_path / "t")
        view = client.get_json("/api/v1/station")
        assert view["gateway_id"] == "gw-term" and {e["evidence_id"] for e in view["my_recent_evidence"]} >= set(uploaded)
        mine = client.get_json("/api/v1/evidence?limit=10")["items"]
        assert {(e["kind"], e["device_id"]) for e in mine} == {("photo", client.paired["terminal_id"]),
                                                               ("video", client.paired["terminal_id"])}
        from simulators.strips.dataset import photo_spec
        from simulators.strips.render import render_jpeg

        jpeg = render_jpeg(*photo_spec(7, 1))  # a cassette the strip simulator draws, with a clear T line
        status, _, body = client.request("POST", "/api/v1/strips/read?sample_id=S-1", jpeg, {"Content-Type": "image/jpeg"})
        answer = json.loads(body)
        assert status == 201 and answer["ok"] and answer["reading"]["judgement"] == "positive" and answer["evidence_id"]
        status, _, body = client.request("POST", "/api/v1/strips/read", b"not a photo", {"Content-Type": "image/jpeg"})
        answer = json.loads(body)
        assert status == 201 and not answer["ok"] and answer["photo_evidence_id"]  # kept as evidence, no reading
        # this station has no signature pad configured: the terminal is told so, and what to do, before anyone waits
        status, _, body = client.request("POST", "/api/v1/signing-sessions", json.dumps(
            {"template": "onsite", "form": {}, "party": {"name": "王小明"}}).encode(), {"Content-Type": "application/json"})
        refusal = json.loads(body)
        assert status == 409 and "no signature pad is configured" in refusal["error"] and 'kind = "signpad"' in refusal["hint"]
