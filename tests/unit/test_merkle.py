"""RFC 9162 Merkle trees: published reference roots, the RFC's own definitions, typed refusals."""

from __future__ import annotations

import hashlib

import pytest

from messages import merkle
from messages.merkle import (
    EMPTY_ROOT,
    BadConsistencyProof,
    BadInclusionProof,
    IndexOutOfRange,
    MerkleError,
    Tree,
    TreeShrank,
    TreeSizeOutOfRange,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

# The eight reference leaves of the RFC 6962 test suite (Certificate Transparency), and the
# published root of each prefix of them.
REFERENCE_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
REFERENCE_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


# The RFC's recursive definitions, transcribed literally, as an independent reference.
def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def test_reference_roots_match_the_published_ones() -> None:
    tree = Tree(REFERENCE_LEAVES)
    assert [tree.root(n).hex() for n in range(1, 9)] == REFERENCE_ROOTS
    assert Tree().root() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_roots_and_proofs_follow_the_rfc_definitions() -> None:
    entries = [f"entry {i}".encode() for i in range(41)]
    tree = Tree(entries)
    for n in range(0, len(entries) + 1):
        assert tree.root(n) == ref_mth(entries[:n])
        for i in range(n):
            assert tree.inclusion_proof(i, n) == ref_path(i, entries[:n])
        for m in range(1, n):
            assert tree.consistency_proof(m, n) == ref_subproof(m, entries[:n], True)


TREE = Tree([bytes([i]) for i in range(8)])
ROOT8 = TREE.root(8)


@pytest.mark.parametrize(
    ("index", "size", "error"),
    [
        (8, 8, IndexOutOfRange),
        (-1, 8, IndexOutOfRange),
        (True, 8, IndexOutOfRange),
        (0, 0, IndexOutOfRange),
        (0, -1, TreeSizeOutOfRange),
        (0, 2**64, TreeSizeOutOfRange),
        (0, 8.0, TreeSizeOutOfRange),
    ],
)
def test_inclusion_refuses_out_of_range(index: object, size: object, error: type) -> None:
    with pytest.raises(error):
        verify_inclusion(index, size, leaf_hash(b"\x00"), TREE.inclusion_proof(0, 8), ROOT8)


def test_inclusion_refuses_malformed_proofs() -> None:
    proof = TREE.inclusion_proof(3, 8)
    leaf = leaf_hash(bytes([3]))
    verify_inclusion(3, 8, leaf, proof, ROOT8)
    cases = [
        [*proof[:1], proof[1][:31], *proof[2:]],  # a short hash
        [*proof, proof[0]],  # one hash too many
        proof[:2],  # one hash too few
        [bytes(32)] * 65,  # longer than any 64-bit tree
        [*proof[:2], "00" * 32],  # not bytes
    ]
    for bad in cases:
        with pytest.raises(BadInclusionProof):
            verify_inclusion(3, 8, leaf, bad, ROOT8)
    with pytest.raises(BadInclusionProof):
        verify_inclusion(3, 8, leaf[:16], proof, ROOT8)


def test_consistency_edge_cases() -> None:
    root3 = TREE.root(3)
    verify_consistency(3, 3, root3, root3, [])
    verify_consistency(0, 8, EMPTY_ROOT, ROOT8, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(TreeShrank):
        verify_consistency(8, 3, ROOT8, root3, [])
    with pytest.raises(BadConsistencyProof, match="different roots"):
        verify_consistency(3, 3, root3, ROOT8, [])
    with pytest.raises(BadConsistencyProof, match="must be empty"):
        verify_consistency(3, 3, root3, root3, [root3])
    with pytest.raises(BadConsistencyProof, match="empty tree"):
        verify_consistency(0, 8, root3, ROOT8, [])
    with pytest.raises(BadConsistencyProof, match="proof is empty"):
        verify_consistency(3, 8, root3, ROOT8, [])
    with pytest.raises(TreeSizeOutOfRange):
        verify_consistency(-1, 8, root3, ROOT8, [])
    proof = TREE.consistency_proof(3, 8)
    with pytest.raises(BadConsistencyProof, match="32-byte"):
        verify_consistency(3, 8, root3, ROOT8, [*proof[:-1], proof[-1] + b"\x00"])
    with pytest.raises(BadConsistencyProof, match="longer"):
        verify_consistency(3, 8, root3, ROOT8, [*proof, proof[0]])
    with pytest.raises(BadConsistencyProof, match="shorter"):
        verify_consistency(3, 8, root3, ROOT8, proof[:-1])
    with pytest.raises(BadConsistencyProof, match="old root"):
        verify_consistency(3, 8, TREE.root(2), ROOT8, proof)
    with pytest.raises(BadConsistencyProof, match="new root"):
        verify_consistency(3, 8, root3, TREE.root(7), proof)


def test_generation_refuses_sizes_the_tree_does_not_have() -> None:
    with pytest.raises(TreeSizeOutOfRange):
        TREE.root(9)
    with pytest.raises(TreeSizeOutOfRange):
        TREE.inclusion_proof(0, 9)
    with pytest.raises(IndexOutOfRange):
        TREE.inclusion_proof(8, 8)
    with pytest.raises(TreeShrank):
        TREE.consistency_proof(5, 4)
    assert TREE.consistency_proof(0, 8) == []
    assert TREE.consistency_proof(8) == []


def test_size_is_bound_only_by_the_signed_root() -> None:
    """RFC 9162 verification reads the proof's shape from (index, size); sizes with the same
    shape accept the same proof. Leaf 0 of the 3-leaf tree and of a 4-leaf tree whose last
    leaf pair hashes to leaf 2's hash look alike: only the root, signed with its size in a
    checkpoint, tells them apart (and no real 4-leaf tree has that root: node hashes and leaf
    hashes are domain-separated). So a verifier takes the size from the checkpoint."""
    root3 = TREE.root(3)
    proof = TREE.inclusion_proof(0, 3)
    verify_inclusion(0, 4, leaf_hash(b"\x00"), proof, root3)
    with pytest.raises(BadInclusionProof):
        verify_inclusion(0, 4, leaf_hash(b"\x00"), proof, TREE.root(4))


def test_error_kinds_are_distinct() -> None:
    kinds = [
        cls.kind
        for cls in (
            MerkleError,
            IndexOutOfRange,
            TreeSizeOutOfRange,
            TreeShrank,
            BadInclusionProof,
            BadConsistencyProof,
        )
    ]
    assert len(set(kinds)) == len(kinds)
    assert all(issubclass(cls, merkle.HsmfleetError) for cls in (MerkleError, TreeShrank))
