"""docs/terminal-api.json against the running service (#19, item 3): schemathesis generates requests for
every documented operation and sends them over mutual TLS with a paired terminal's certificate; no
answer may be a 5xx, and every answer's status, content type, headers and body must be the documented
ones. Kept to a few examples per operation so the file runs in seconds."""

from __future__ import annotations

import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.terminal.server import openapi_document
from tests.terminal_support import init_data, offer_code, paired_terminal, station, write_config

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")  # tus PATCH bodies: raw bytes

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES = 5


@pytest.fixture(scope="module")
def terminal(tmp_path_factory):
    home = tmp_path_factory.mktemp("openapi")
    data = init_data(home)
    with station(write_config(home, data)) as (_, ready):
        yield data, ready, paired_terminal(home, data, ready, officer="300001")


@pytest.fixture(scope="module")
def api_schema(terminal):
    _, _, client = terminal
    served = client.get_json("/openapi.json")
    assert served == openapi_document()  # the service serves the published document, not another
    # the pairing operation lives on the other port (tested below); the live stream never ends by itself
    return (schemathesis.openapi.from_dict(served)
            .exclude(path="/pair").exclude(path="/api/v1/results/events"))


@pytest.fixture(scope="module")
def session(terminal):
    _, _, client = terminal
    s = requests.Session()
    s.cert = (str(client.cert_path), str(client.key_path))
    s.verify = str(client.ca_path)
    return s


def test_every_operation_answers_as_documented(terminal, api_schema, session):
    """Each documented operation, EXAMPLES generated requests each (schemathesis' pytest plugin is not used:
    its fixture loader does not work with this pytest; the strategies are the same)."""
    _, ready, client = terminal
    base_url = ready["terminal_api"].rstrip("/")
    tested = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_documented(case):
            case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=30, verify=str(client.ca_path))

        answers_as_documented()
        tested.append(operation.label)
    assert len(tested) >= 14, tested  # every operation of the document but /pair and the stream


def test_pairing_answers_as_documented(terminal, tmp_path):
    """``POST /pair`` on the pairing port: a refusal (403 for a bad code, 400 for a bad body) is documented JSON."""
    data, ready, client = terminal
    doc = openapi_document()
    responses = doc["paths"]["/pair"]["post"]["responses"]
    error_schema = doc["components"]["schemas"]["Error"]
    import jsonschema

    for body, status in ((b"not json", 400), (json.dumps({"code": "AAAAAAAAAAAAAAAA", "csr": client.csr_pem(),
                                                          "officer_id": "300001"}).encode(), 403)):
        answer = requests.post(ready["terminal_pairing"] + "pair", data=body, verify=str(client.ca_path), timeout=10,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == status and str(status) in responses
        jsonschema.validate(answer.json(), error_schema)
    assert offer_code(data, ready["terminal_pairing"])  # the port still pairs after the refusals


def test_results_stream_opens_with_the_current_results(terminal):
    _, ready, client = terminal
    import http.client

    host, port = ready["terminal_api"].split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=client.ssl_context(), timeout=10)
    conn.request("GET", "/api/v1/results/events")
    response = conn.getresponse()
    status, headers = response.status, dict(response.getheaders())
    first = response.readline() + response.readline()
    conn.close()
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert first.startswith(b"event: results\ndata: [")
