"""Rollouts in the pure core: the rollout record and its fold (:mod:`.state`), the stages and
their steps (:mod:`.decisions`), judging members' and cosigners' answers (:mod:`.answers`),
the later flows of a fleet (:mod:`.rotation`, :mod:`.replacement`, :mod:`.retirement`), and
what the shell is to carry out, read off the state (:mod:`.effects`)."""
