"""Property tests: every generated proof verifies, and no single-bit change survives.

Sizes are the one subtle part: RFC 9162 verification reads a proof's shape from the sizes, so a
changed size is caught by the root that a signed checkpoint pairs with it. The tests flip a size
bit and verify against the honest root of the flipped size (what a verifier holding that
checkpoint would use); flips past the tree verify against the original root.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages.merkle import (
    MerkleError,
    Tree,
    TreeShrank,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 200


def flip(value: bytes, bit: int) -> bytes:
    bit %= 8 * len(value)
    data = bytearray(value)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


@st.composite
def trees(draw) -> tuple[Tree, int]:
    """A tree with distinct entries, and a size ``n`` in it; the tree holds enough extra leaves
    that flipping any bit of ``n`` below its top bit + 1 stays inside it."""
    n = draw(st.integers(1, MAX_SIZE))
    salt = draw(st.binary(max_size=8))
    capacity = 1 << (n.bit_length() + 1)
    return Tree([salt + i.to_bytes(4, "big") for i in range(capacity)]), n


def fails(check, *args) -> bool:
    try:
        check(*args)
    except MerkleError:
        return True
    return False


@settings(max_examples=150, deadline=None)
@given(trees(), st.data())
def test_every_inclusion_proof_verifies_and_every_bit_matters(case, data) -> None:
    tree, n = case
    index = data.draw(st.integers(0, n - 1))
    entry = tree.node(0, index)
    proof = tree.inclusion_proof(index, n)
    root = tree.root(n)
    verify_inclusion(index, n, entry, proof, root)

    bit = data.draw(st.integers(0, 255))
    assert fails(verify_inclusion, index, n, entry, proof, flip(root, bit))
    assert fails(verify_inclusion, index, n, flip(entry, bit), proof, root)
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:at], flip(proof[at], bit), *proof[at + 1 :]]
        assert fails(verify_inclusion, index, n, entry, bad, root)

    index_bit = data.draw(st.integers(0, 63))
    assert fails(verify_inclusion, index ^ (1 << index_bit), n, entry, proof, root)

    size_bit = data.draw(st.integers(0, 63))
    other = n ^ (1 << size_bit)
    other_root = tree.root(other) if 0 < other <= tree.size else root
    assert fails(verify_inclusion, index, other, entry, proof, other_root)


@settings(max_examples=150, deadline=None)
@given(trees(), st.data())
def test_every_consistency_proof_verifies_and_every_bit_matters(case, data) -> None:
    tree, n = case
    m = data.draw(st.integers(1, n))
    proof = tree.consistency_proof(m, n)
    old, new = tree.root(m), tree.root(n)
    verify_consistency(m, n, old, new, proof)
    if m == n:
        return

    bit = data.draw(st.integers(0, 255))
    assert fails(verify_consistency, m, n, flip(old, bit), new, proof)
    assert fails(verify_consistency, m, n, old, flip(new, bit), proof)
    at = data.draw(st.integers(0, len(proof) - 1))
    bad = [*proof[:at], flip(proof[at], bit), *proof[at + 1 :]]
    assert fails(verify_consistency, m, n, old, new, bad)

    size_bit = data.draw(st.integers(0, 63))
    m2 = m ^ (1 << size_bit)
    old2 = tree.root(m2) if m2 <= tree.size else old
    assert fails(verify_consistency, m2, n, old2, new, proof)
    n2 = n ^ (1 << size_bit)
    new2 = tree.root(n2) if n2 <= tree.size else new
    assert fails(verify_consistency, m, n2, old, new2, proof)


@settings(max_examples=100, deadline=None)
@given(trees(), st.data())
def test_consistency_chains_compose(case, data) -> None:
    """Proofs between any sizes a <= b <= c verify, and c -> a is refused as shrinking."""
    tree, n = case
    a, b = sorted(data.draw(st.lists(st.integers(1, n), min_size=2, max_size=2)))
    for old, new in ((a, b), (b, n), (a, n)):
        verify_consistency(
            old, new, tree.root(old), tree.root(new), tree.consistency_proof(old, new)
        )
    if a < n:
        with pytest.raises(TreeShrank):
            verify_consistency(n, a, tree.root(n), tree.root(a), [])
