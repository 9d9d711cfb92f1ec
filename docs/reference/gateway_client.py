"""A third-party gateway written from docs/ and the .proto files alone (no egw code imported).

    protoc -I protos --python_out=gen --grpc_python_out=gen egw/v1/*.proto
    PYTHONPATH=gen python gateway_client.py HOST:PORT TOKEN GATEWAY_ID FILE

Enrols with the operator's token (enrolment.md), signs a manifest for FILE (formats/manifest.md,
formats/dsse.md), uploads it in two sessions — the first deliberately cut short, the second
resumed at the committed offset (grpc.md) — and checks the receipt as formats/receipt.md and
trust.md say. Prints the receipt JSON. The test suite runs this file as it stands.
"""

import base64
import datetime
import hashlib
import json
import socket
import ssl
import sys
import uuid

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from egw.v1 import evidence_pb2, ingest_pb2, ingest_pb2_grpc

ARC = "2.25.90269217322632212408011344417497040742.1."  # trust.md: role EKUs
GATEWAY_ROLE, RECEIPT_ROLE = ARC + "1", ARC + "2"
CHUNK = 1 << 20


def pae(kind: str, body: bytes) -> bytes:  # dsse.md
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind.encode(), len(body), body)


def uuid7() -> str:  # RFC 9562: 48-bit Unix milliseconds, version 7, variant 10
    ms = datetime.datetime.now(datetime.UTC).timestamp() * 1000
    raw = int(ms).to_bytes(6, "big") + uuid.uuid4().bytes[6:]
    return str(uuid.UUID(bytes=bytes([*raw[:6], 0x70 | raw[6] & 0x0F, raw[7], 0x80 | raw[8] & 0x3F, *raw[9:]])))


def role_and_id(cert: x509.Certificate, role: str, kind: str) -> str:
    usages = [u.dotted_string for u in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    ids = [u.removeprefix(f"urn:egw:{kind}:") for u in uris if u.startswith(f"urn:egw:{kind}:")]
    assert role in usages and len(ids) == 1, f"certificate lacks the {kind} role or identity"
    return ids[0]


def enrol(host: str, token: str, gateway_id: str, key: ec.EllipticCurvePrivateKey):
    _, port, ca_sha256, _ = token.split(".")  # enrolment.md: egw1.<port>.<CA sha256>.<secret>
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, int(port))) as raw, unverified.wrap_socket(raw) as tls:
        getter = getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain  # public from 3.13
        chain = [c.public_bytes(2) for c in getter()]  # 2: DER
    ca_der = next(der for der in chain if hashlib.sha256(der).hexdigest() == ca_sha256)
    ca_pem = x509.load_der_x509_certificate(ca_der).public_bytes(serialization.Encoding.PEM)
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, gateway_id)])).sign(key, hashes.SHA256())
    with grpc.secure_channel(f"{host}:{port}", grpc.ssl_channel_credentials(ca_pem)) as channel:
        reply = ingest_pb2_grpc.EvidenceIngestStub(channel).Enroll(ingest_pb2.EnrollRequest(
            csr_pem=csr.public_bytes(serialization.Encoding.PEM), token=token, gateway_id=gateway_id))
    mine = x509.load_pem_x509_certificate(reply.certificate_pem)
    assert role_and_id(mine, GATEWAY_ROLE, "gateway") == gateway_id
    signer = x509.load_pem_x509_certificate(reply.platform_certificate_pem)
    signer.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    role_and_id(signer, RECEIPT_ROLE, "platform")
    return ca_pem, reply.certificate_pem, signer


def manifest(key: ec.EllipticCurvePrivateKey, gateway_id: str, data: bytes, name: str) -> evidence_pb2.Envelope:
    digest = hashlib.sha256(data).hexdigest()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    body = {"v": "egw.manifest/1", "evidence_id": uuid7(), "sha256": digest, "digests": {"sha256": digest},
            "size": len(data), "media_type": "application/octet-stream", "kind": "document",
            "source": {"path": name, "device_id": None}, "officer_id": None, "unit": None,
            "capture": {"device_clock": None, "clock_offset_s": None, "corrected": None},
            "important": False, "gateway_id": gateway_id, "ingested_at": now, "derived": []}
    payload = json.dumps(body, indent=2, sort_keys=True).encode()
    kind = "application/vnd.egw.manifest.v1+json"
    keyid = hashlib.sha256(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    sig = key.sign(pae(kind, payload), ec.ECDSA(hashes.SHA256()))
    return evidence_pb2.Envelope(payload_type=kind, payload=payload, signatures=[evidence_pb2.Signature(keyid=keyid, sig=sig)])


def upload(stub, envelope, data: bytes, start: int, stop: int) -> ingest_pb2.UploadResponse:
    body = json.loads(envelope.payload)
    def requests():
        yield ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(
            manifest=envelope, sha256=body["sha256"], size=len(data), start_offset=start))
        for pos in range(start, stop, CHUNK):
            yield ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=pos, data=data[pos:min(pos + CHUNK, stop)]))
    return stub.Upload(requests())


def check_receipt(reply, signer: x509.Certificate, envelope, gateway_id: str) -> dict:
    receipt = reply.receipt
    assert receipt.payload_type == "application/vnd.egw.receipt.v1+json"
    signer.public_key().verify(receipt.signatures[0].sig, pae(receipt.payload_type, receipt.payload), ec.ECDSA(hashes.SHA256()))
    body, sent = json.loads(receipt.payload), json.loads(envelope.payload)
    assert (body["sha256"], int(body["size"])) == (sent["sha256"], sent["size"])
    assert (body["evidenceId"], body["gatewayId"]) == (sent["evidence_id"], gateway_id)
    return body


def main(address: str, token: str, gateway_id: str, path: str) -> None:
    host = address.rsplit(":", 1)[0]
    key = ec.generate_private_key(ec.SECP256R1())
    ca_pem, cert_pem, signer = enrol(host, token, gateway_id, key)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    data = open(path, "rb").read()
    envelope = manifest(key, gateway_id, data, path.rsplit("/", 1)[-1])
    credentials = grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem)
    with grpc.secure_channel(address, credentials) as channel:
        stub = ingest_pb2_grpc.EvidenceIngestStub(channel)
        upload(stub, envelope, data, 0, len(data) // 2)  # cut short: no receipt yet
        query = stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=hashlib.sha256(data).hexdigest(),
                                                               evidence_id=json.loads(envelope.payload)["evidence_id"]))
        reply = upload(stub, envelope, data, query.committed_offset, len(data))
    print(json.dumps({"resumed_from": query.committed_offset, "receipt": check_receipt(reply, signer, envelope, gateway_id),
                      "receipt_envelope": base64.b64encode(reply.receipt.payload).decode()}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
