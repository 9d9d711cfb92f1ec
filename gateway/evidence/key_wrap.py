"""The gateway key at rest: PKCS#8 ``ENCRYPTED PRIVATE KEY`` with a key-derivation cost worth the name.

``cryptography``'s ``BestAvailableEncryption`` derives the wrapping key with PBKDF2 at 2,048
iterations, and its ``encryption_builder()`` offers no cost for PKCS#8. A stolen ``gateway.key``
would then cost a guesser almost nothing per passphrase. This module writes the standard PBES2
structure (RFC 8018) itself, with asn1crypto for the ASN.1 and ``cryptography`` for the primitives:

- PBKDF2-HMAC-SHA256 at 600,000 iterations (the OWASP 2023 figure for PBKDF2-SHA256), 16-byte salt;
- AES-256-CBC, random IV, PKCS#7 padding.

It is what ``openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -iter 600000`` writes, so
``openssl pkey`` and every PKCS#8 reader (``cryptography``, Python's ``ssl``) read it with the passphrase.
PBKDF2 rather than scrypt: scrypt at a cost OWASP accepts needs more memory than OpenSSL's default
scrypt limit (32 MiB) for some parameter choices, and a key ``openssl`` cannot open is not standard in practice.
"""

from __future__ import annotations

import os

from asn1crypto import algos, keys, pem
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

__all__ = ["ITERATIONS", "PRF", "key_to_pem", "needs_rewrap", "kdf_of"]

ITERATIONS = 600_000
PRF = "sha256"
_SALT_BYTES = 16
_KEY_BYTES = 32
_PEM_LABEL = "ENCRYPTED PRIVATE KEY"


def key_to_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    """The key as PKCS#8 PEM: plain without a passphrase, else PBES2 as described above."""
    if not passphrase:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    salt, iv = os.urandom(_SALT_BYTES), os.urandom(16)
    wrapping_key = PBKDF2HMAC(hashes.SHA256(), _KEY_BYTES, salt, ITERATIONS).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(AES(wrapping_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    kdf = algos.KdfAlgorithm({
        "algorithm": "pbkdf2",
        "parameters": {"salt": algos.Pbkdf2Salt(name="specified", value=salt), "iteration_count": ITERATIONS,
                       "prf": {"algorithm": PRF, "parameters": None}},
    })
    scheme = algos.EncryptionAlgorithm({
        "algorithm": "pbes2",
        "parameters": {"key_derivation_func": kdf,
                       "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv}},
    })
    info = keys.EncryptedPrivateKeyInfo({"encryption_algorithm": scheme, "encrypted_data": ciphertext})
    armored: bytes = pem.armor(_PEM_LABEL, info.dump())
    return armored


def kdf_of(pem_bytes: bytes) -> tuple[str, str, int] | None:
    """(scheme, PRF, iterations) of an encrypted PKCS#8 PEM key; None when it is not encrypted PKCS#8.

    The scheme is asn1crypto's name (``pbes2``, ``pbes1_sha1_des``…); the PRF and iteration count
    are those of PBKDF2, or ``""`` and 0 for a scheme without them (e.g. scrypt, which is not re-wrapped)."""
    if not pem.detect(pem_bytes):
        return None
    label, _headers, der = pem.unarmor(pem_bytes)
    if label != _PEM_LABEL:
        return None
    scheme = keys.EncryptedPrivateKeyInfo.load(der)["encryption_algorithm"]
    name = scheme["algorithm"].native
    if name != "pbes2":
        return str(name), "", 0
    kdf = scheme["parameters"]["key_derivation_func"]
    if kdf["algorithm"].dotted != "1.2.840.113549.1.5.12":  # not PBKDF2 (scrypt…): its cost is its own business
        return "pbes2", "", 0
    params = kdf["parameters"]
    return "pbes2", str(params["prf"]["algorithm"].native), int(params["iteration_count"].native)


def needs_rewrap(pem_bytes: bytes) -> bool:
    """True for an encrypted key written with PBES1, or PBKDF2 weaker than :data:`ITERATIONS` or with SHA-1."""
    found = kdf_of(pem_bytes)
    if found is None:
        return False
    scheme, prf, iterations = found
    if scheme != "pbes2":
        return True
    if not prf:
        return False
    return prf != PRF or iterations < ITERATIONS
