"""RFC 9162 (Certificate Transparency v2) Merkle trees: tree hashes, inclusion and consistency.

Normative summary (RFC 9162 section 2.1; the same tree as RFC 6962):

- ``HASH`` is SHA-256, every hash is 32 bytes.
- The hash of an empty tree is ``SHA-256()`` (the hash of the empty string).
- A leaf's hash is ``SHA-256(0x00 || entry)``; an interior node's is
  ``SHA-256(0x01 || left || right)``.
- A tree of ``n > 1`` entries splits at ``k``, the largest power of two smaller than ``n``:
  ``MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``.
- An inclusion proof (``PATH``, section 2.1.3.1) and a consistency proof (``PROOF``, section
  2.1.4.1) are lists of 32-byte node hashes, ordered from the leaves towards the root.
- Verification follows sections 2.1.3.2 and 2.1.4.2 step by step (see
  :func:`verify_inclusion` and :func:`verify_consistency`).

Proof generation is written once, over a *node source*: a function ``(level, index) -> hash``
giving the root of the perfect subtree of ``2**level`` leaves that starts at leaf
``index * 2**level``. :class:`Tree` keeps those nodes in memory; the cosigner's durable log keeps
them in SQLite; both produce the same proofs in ``O(log n)`` node reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from messages.errors import HsmfleetError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_TREE_SIZE = 2**64 - 1
"""Tree sizes and leaf indexes are unsigned 64-bit integers on the wire (RFC 9162 section 4)."""
MAX_PROOF_HASHES = 64
"""No proof in a tree of at most 2**64 - 1 leaves needs more hashes."""

NodeSource = Callable[[int, int], bytes]
"""``(level, index) -> hash`` of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 gives leaf hashes."""


class MerkleError(HsmfleetError):
    """A Merkle tree operation was refused."""

    kind = "merkle"


class IndexOutOfRange(MerkleError):
    """A leaf index is negative or not below the tree size."""

    kind = "index_out_of_range"


class TreeSizeOutOfRange(MerkleError):
    """A tree size is negative, above 2**64 - 1, or larger than the tree that was asked."""

    kind = "size_out_of_range"


class TreeShrank(MerkleError):
    """The newer tree is smaller than the one it must extend: a log never shrinks."""

    kind = "tree_shrank"


class BadInclusionProof(MerkleError):
    """An inclusion proof is malformed or does not lead to the expected root."""

    kind = "bad_inclusion_proof"


class BadConsistencyProof(MerkleError):
    """A consistency proof is malformed or does not link the two roots."""

    kind = "bad_consistency_proof"


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``: the hash of one log entry."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (``size >= 2``)."""
    return 1 << ((size - 1).bit_length() - 1)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_size(size: int, what: str = "tree size") -> None:
    if not _is_count(size) or not 0 <= size <= MAX_TREE_SIZE:
        raise TreeSizeOutOfRange(f"{what} must be an integer in [0, 2**64 - 1]", size=size)


def _check_index(index: int, size: int) -> None:
    if not _is_count(index) or not 0 <= index < size:
        raise IndexOutOfRange("leaf index must be below the tree size", index=index, size=size)


def subtree_root(nodes: NodeSource, start: int, end: int) -> bytes:
    """``MTH(D[start:end])`` for a range that the RFC's recursive split produces.

    Such a range either is a perfect, aligned subtree (one node read) or splits into a perfect
    left part and a smaller right part; so the cost is ``O(log(end - start))`` node reads.
    """
    size = end - start
    if size == 0:
        return EMPTY_ROOT
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        return nodes(level, start >> level)
    k = _split(size)
    return node_hash(subtree_root(nodes, start, start + k), subtree_root(nodes, start + k, end))


def inclusion_path(nodes: NodeSource, index: int, size: int) -> list[bytes]:
    """``PATH(index, D[size])`` of RFC 9162 section 2.1.3.1, leaf-side hash first."""
    _check_size(size)
    _check_index(index, size)
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_root(nodes, start + k, end))
            end = start + k
        else:
            path.append(subtree_root(nodes, start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(nodes: NodeSource, old_size: int, new_size: int) -> list[bytes]:
    """``PROOF(old_size, D[new_size])`` of RFC 9162 section 2.1.4.1, leaf-side hash first.

    Empty when ``old_size`` is 0 or equals ``new_size``: there is nothing to prove.
    """
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    if new_size < old_size:
        raise TreeShrank("new tree is smaller than the old one", old=old_size, new=new_size)
    if old_size == 0 or old_size == new_size:
        return []
    path: list[bytes] = []
    m, start, end, whole = old_size, 0, new_size, True
    # SUBPROOF(m, D[start:end], whole), unrolled; m counts leaves from ``start``.
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            path.append(subtree_root(nodes, start + k, end))
            end = start + k
        else:
            path.append(subtree_root(nodes, start, start + k))
            start += k
            m -= k
            whole = False
    if not whole:
        path.append(subtree_root(nodes, start, end))
    path.reverse()
    return path


def _check_hashes(proof: Sequence[bytes], error: type[MerkleError]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise error("proof has more than 64 hashes", length=len(proof))
    for position, value in enumerate(proof):
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise error("proof element is not a 32-byte hash", position=position)


def verify_inclusion(
    index: int, size: int, entry_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that the leaf hash ``entry_hash`` sits at ``index`` of the tree of ``size`` with
    ``root``; raise :class:`BadInclusionProof` (or an out-of-range error) otherwise.

    The algorithm of RFC 9162 section 2.1.3.2:

    1. fail if ``index >= size``;
    2. ``fn = index``, ``sn = size - 1``, ``r = entry_hash``;
    3. for each ``p`` in ``proof``: fail if ``sn == 0``; if ``LSB(fn)`` is set or ``fn == sn``,
       ``r = HASH(0x01 || p || r)`` and then, if ``LSB(fn)`` is not set, right-shift ``fn`` and
       ``sn`` until ``LSB(fn)`` is set or ``fn == 0``; otherwise ``r = HASH(0x01 || r || p)``;
       then right-shift ``fn`` and ``sn`` once;
    4. accept only if ``sn == 0`` and ``r == root``.

    ``size`` must come from a signed checkpoint, never from whoever sent the proof: the RFC
    algorithm reads the proof's shape from ``(index, size)``, and two sizes with the same shape
    (index 0 of sizes 3 and 4, say) accept the same proof. Only the signed root binds the size.
    """
    _check_size(size)
    _check_index(index, size)
    if not isinstance(entry_hash, bytes) or len(entry_hash) != HASH_SIZE:
        raise BadInclusionProof("leaf hash must be 32 bytes", index=index)
    _check_hashes(proof, BadInclusionProof)
    fn, sn, r = index, size - 1, entry_hash
    for p in proof:
        if sn == 0:
            raise BadInclusionProof("proof is longer than the path", index=index, size=size)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise BadInclusionProof("proof is shorter than the path", index=index, size=size)
    if r != root:
        raise BadInclusionProof("proof does not lead to the root", index=index, size=size)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the tree of ``old_size``
    with ``old_root``; raise :class:`BadConsistencyProof` or :class:`TreeShrank` otherwise.

    Trivial cases first, each with an empty proof: ``new_size < old_size`` fails (a log never
    shrinks); equal sizes need equal roots; ``old_size == 0`` needs ``old_root`` to be the
    empty-tree hash and proves nothing about ``new_root`` (every tree extends the empty one).
    Otherwise ``0 < old_size < new_size`` and the algorithm of RFC 9162 section 2.1.4.2 runs:

    1. fail if ``proof`` is empty;
    2. if ``old_size`` is a power of two, prepend ``old_root`` to the proof;
    3. ``fn = old_size - 1``, ``sn = new_size - 1``;
    4. while ``LSB(fn)`` is set, right-shift ``fn`` and ``sn``;
    5. ``fr = sr = proof[0]``;
    6. for each next ``c``: fail if ``sn == 0``; if ``LSB(fn)`` is set or ``fn == sn``,
       ``fr = HASH(0x01 || c || fr)``, ``sr = HASH(0x01 || c || sr)`` and then, if ``LSB(fn)``
       is not set, right-shift ``fn`` and ``sn`` until ``LSB(fn)`` is set or ``fn == 0``;
       otherwise ``sr = HASH(0x01 || sr || c)``; then right-shift ``fn`` and ``sn`` once;
    7. accept only if ``fr == old_root``, ``sr == new_root`` and ``sn == 0``.
    """
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    if new_size < old_size:
        raise TreeShrank("new tree is smaller than the old one", old=old_size, new=new_size)
    _check_hashes(proof, BadConsistencyProof)
    if old_size == new_size or old_size == 0:
        if proof:
            raise BadConsistencyProof("proof must be empty", old=old_size, new=new_size)
        if old_size == new_size and old_root != new_root:
            raise BadConsistencyProof("same size but different roots", size=old_size)
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise BadConsistencyProof("root of the empty tree is not SHA-256()")
        return
    if not proof:
        raise BadConsistencyProof("proof is empty", old=old_size, new=new_size)
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise BadConsistencyProof("proof is longer than needed", old=old_size, new=new_size)
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise BadConsistencyProof("proof is shorter than needed", old=old_size, new=new_size)
    if fr != old_root:
        raise BadConsistencyProof("proof does not lead to the old root", old=old_size)
    if sr != new_root:
        raise BadConsistencyProof("proof does not lead to the new root", new=new_size)


class TreeView:
    """Tree heads and proofs of an append-only tree whose perfect-subtree nodes can be read.

    Subclasses provide :attr:`size` and :meth:`node` (a :data:`NodeSource`).
    """

    @property
    def size(self) -> int:
        raise NotImplementedError

    def node(self, level: int, index: int) -> bytes:
        """The hash of the perfect subtree of ``2**level`` leaves starting at leaf
        ``index * 2**level``."""
        raise NotImplementedError

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` leaves (all of them by default)."""
        size = self.size if size is None else self._within(size)
        return subtree_root(self.node, 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves."""
        size = self.size if size is None else self._within(size)
        return inclusion_path(self.node, index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The consistency proof from the tree of ``old_size`` leaves to ``new_size`` leaves."""
        new_size = self.size if new_size is None else self._within(new_size)
        return consistency_path(self.node, old_size, new_size)

    def _within(self, size: int) -> int:
        _check_size(size)
        if size > self.size:
            raise TreeSizeOutOfRange("tree is smaller than the size asked", size=size)
        return size


class Frontier:
    """The roots of the perfect subtrees that make up a tree, largest first: all that is needed
    to append a leaf and to hash the whole tree."""

    def __init__(self) -> None:
        self._nodes: list[tuple[int, bytes]] = []

    def copy(self) -> Frontier:
        frontier = Frontier()
        frontier._nodes = list(self._nodes)
        return frontier

    def append(self, entry_hash: bytes) -> list[bytes]:
        """Add a leaf; return its hash and then the hashes of the perfect subtrees it completes,
        lowest level first: for the leaf at ``index``, item ``L`` of the list is node
        ``(L, (index + 1) // 2**L - 1)``."""
        completed = [entry_hash]
        node, level = entry_hash, 0
        while self._nodes and self._nodes[-1][0] == level:
            node = node_hash(self._nodes.pop()[1], node)
            level += 1
            completed.append(node)
        self._nodes.append((level, node))
        return completed

    def root(self) -> bytes:
        """``MTH`` of the whole tree: the perfect subtrees' roots folded from the right."""
        if not self._nodes:
            return EMPTY_ROOT
        root = self._nodes[-1][1]
        for _, node in reversed(self._nodes[:-1]):
            root = node_hash(node, root)
        return root


class Tree(TreeView):
    """An append-only Merkle tree in memory: every perfect subtree's hash, kept once.

    For tests, benchmarks and small logs; the cosigner's durable log stores the same nodes.
    """

    def __init__(self, entries: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        self._frontier = Frontier()
        for entry in entries:
            self.append(entry)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, entry: bytes) -> int:
        """Add ``entry`` as the next leaf and return its index."""
        index = self.size
        for level, node in enumerate(self._frontier.append(leaf_hash(entry))):
            if level == len(self._levels):
                self._levels.append([])
            self._levels[level].append(node)
        return index

    def node(self, level: int, index: int) -> bytes:
        return self._levels[level][index]
