"""DSSE: the spec's PAE example, signatures, and malformed envelopes."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, strategies as st

from gateway.errors import VerificationError
from gateway.evidence import dsse


def test_pae_matches_the_dsse_spec_example():
    # protocol.md of secure-systems-lab/dsse: PAE("http://example.com/HelloWorld", "hello world")
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_counts_bytes_not_characters():
    assert dsse.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


def test_sign_verify_and_every_alteration_fails(key):
    env = dsse.sign("application/x-test", b'{"a":1}', key)
    parsed = dsse.Envelope.from_bytes(env.to_bytes())
    dsse.verify(parsed, key.public_key(), "application/x-test")
    with pytest.raises(VerificationError, match="payloadType"):
        dsse.verify(parsed, key.public_key(), "application/x-other")
    altered = dsse.Envelope(parsed.payload_type, b'{"a":2}', parsed.signatures)
    with pytest.raises(VerificationError, match="no signature"):
        dsse.verify(altered, key.public_key())
    retyped = dsse.Envelope("application/x-test2", parsed.payload, parsed.signatures)
    with pytest.raises(VerificationError):
        dsse.verify(retyped, key.public_key())
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(VerificationError):
        dsse.verify(parsed, other.public_key())


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=10))
def test_any_json_either_parses_or_raises_verification_error(value):
    try:
        dsse.Envelope.from_bytes(json.dumps(value).encode())
    except VerificationError:
        pass


@given(st.binary(max_size=200))
def test_any_bytes_either_parse_or_raise_verification_error(raw):
    try:
        dsse.Envelope.from_bytes(raw)
    except VerificationError:
        pass
