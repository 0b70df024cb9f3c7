"""Quorum replication of vault records among a fleet's members.

CASPaxos (D. Rystsov, "CASPaxos: Replicated State Machines without logs", 2018,
arXiv:1802.07000, with a safety proof in its appendix): every record is its own rewritable
register, changed by a function through a prepare and an accept round, each needing a quorum of
members. There is no leader; any member proposes, and ballots order concurrent writers.

- :mod:`node.quorum.rules`: what an acceptor promises and accepts (pure);
- :mod:`node.quorum.store`: the acceptor's durable state (SQLite, WAL, fsync per commit);
- :mod:`node.quorum.acceptor`: the acceptor on NATS, one transaction and signature per batch;
- :mod:`node.quorum.proposer`: rounds over batches of records (group commit);
- :mod:`node.quorum.votes` and :mod:`messages.commit_proof`: counting signed votes, commit proofs;
- :mod:`messages.membership`: configurations and the CASPaxos membership-change steps;
- :mod:`node.quorum.reconfigure`: driving those steps, operator-signed, through every member;
- :mod:`node.quorum.catchup`: copying the latest values from a majority before voting;
- :mod:`node.quorum.replica`: one member's acceptor, proposer and configuration together;
- :mod:`node.quorum.member`: one member as a process (``python -m node.quorum.member``), with
  the vault (:mod:`node.vault`); :mod:`node.quorum.localfleet` lays out a fleet on one machine.
"""
