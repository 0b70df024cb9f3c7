"""The vault a fleet guards: per-user records replicated by quorum, guesses limited per user.

- :mod:`node.vault.keys`: the fleet's session and storage keys as a member holds them;
- :mod:`node.vault.record`: the user record and its transitions (pure);
- :mod:`node.vault.evaluator`: evaluating a guess, only for an attempt a quorum committed;
- :mod:`node.vault.service`: register and recover on NATS.
"""
