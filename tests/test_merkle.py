"""RFC 9162 hashing against the Certificate Transparency reference vectors, plus properties."""

import hashlib

import pytest
from hypothesis import given, strategies as st

from gateway.errors import VerificationError
from gateway.evidence import merkle

# The CT reference leaves and roots (RFC 6962 test data, as used by transparency-dev/merkle).
LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
CONSISTENCY = [
    (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
HASHES = [merkle.leaf_hash(x) for x in LEAVES]


def test_empty_tree_is_sha256_of_nothing():
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    assert merkle.Frontier().root().hex() == ROOTS[0]


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size):
    assert merkle.root(HASHES[:size]).hex() == ROOTS[size]
    frontier = merkle.Frontier()
    for h in HASHES[:size]:
        frontier.append(h)
    assert frontier.root().hex() == ROOTS[size] and frontier.size == size


@pytest.mark.parametrize("index,size,path", INCLUSION)
def test_reference_inclusion_proofs(index, size, path):
    assert [p.hex() for p in merkle.inclusion_proof(index, HASHES[:size])] == path
    merkle.verify_inclusion(HASHES[index], index, size, [bytes.fromhex(p) for p in path], bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize("old,new,path", CONSISTENCY)
def test_reference_consistency_proofs(old, new, path):
    assert [p.hex() for p in merkle.consistency_proof(old, HASHES[:new])] == path
    merkle.verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), [bytes.fromhex(p) for p in path])


def test_wrong_leaf_index_size_or_path_is_rejected():
    index, size, path = INCLUSION[1]
    proof = [bytes.fromhex(p) for p in path]
    root = bytes.fromhex(ROOTS[size])
    for bad in [(HASHES[4], index, size, proof), (HASHES[index], index - 1, size, proof),
                (HASHES[index], index, 4, proof), (HASHES[index], index, size, proof[:-1]),
                (HASHES[index], index, size, proof + proof[:1]), (HASHES[index], 9, size, proof)]:
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(bad[0], bad[1], bad[2], bad[3], root)


@given(st.integers(1, 70), st.data())
def test_every_inclusion_proof_verifies_and_tampering_fails(size, data):
    leaves = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(size)]
    index = data.draw(st.integers(0, size - 1))
    root = merkle.root(leaves)
    proof = merkle.inclusion_proof(index, leaves)
    merkle.verify_inclusion(leaves[index], index, size, proof, root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        tampered = list(proof)
        tampered[k] = bytes([tampered[k][0] ^ 1]) + tampered[k][1:]
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(leaves[index], index, size, tampered, root)


@given(st.integers(1, 70), st.data())
def test_every_consistency_proof_verifies_and_a_rewritten_history_fails(new, data):
    leaves = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(new)]
    old = data.draw(st.integers(1, new))
    proof = merkle.consistency_proof(old, leaves)
    merkle.verify_consistency(old, new, merkle.root(leaves[:old]), merkle.root(leaves), proof)
    rewritten = list(leaves)
    rewritten[data.draw(st.integers(0, old - 1))] = merkle.leaf_hash(b"forged")
    if old < new:
        with pytest.raises(VerificationError):
            merkle.verify_consistency(old, new, merkle.root(rewritten[:old]), merkle.root(leaves), proof)
