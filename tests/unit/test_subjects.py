import pytest

from messages import subjects
from messages.errors import BadSubject


def test_subjects_follow_the_design_table():
    assert subjects.event("rollout", "r-1") == "fleet.evt.rollout.r-1"
    assert subjects.node_command("n1", "attest") == "fleet.node.n1.cmd.attest"
    assert subjects.node_status("n1") == "fleet.node.n1.status"
    assert subjects.quorum("f1", "prepare") == "fleet.q.f1.prepare"
    assert subjects.vault("f1", "recover") == "fleet.vault.f1.recover"
    assert subjects.cosign("cf") == "cosign.cf.sign"


@pytest.mark.parametrize("bad", ["", "a.b", "a*", ">", "a b", "x" * 129, "n\n"])
def test_tokens_that_would_change_the_subject_are_refused(bad):
    with pytest.raises(BadSubject):
        subjects.node_status(bad)


def test_unknown_flow_and_verb_are_refused():
    with pytest.raises(BadSubject):
        subjects.event("payroll", "x")
    with pytest.raises(BadSubject):
        subjects.node_command("n1", "format-disk")
