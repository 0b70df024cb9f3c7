"""``hsmfleet vault``: unusable arguments end it with exit 2 and one clear line, before anything
is sent (no NATS server is needed to see it)."""

from __future__ import annotations

import pytest

from ops import cli

pytestmark = pytest.mark.usefixtures("keep_logging")  # every test here runs cli.main


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bundle.json").write_text("{}")
    (tmp_path / "pins.json").write_text("{}")
    (tmp_path / "authority.key").write_text("00" * 32)
    (tmp_path / "pin").write_text("2468\n")
    return tmp_path


def run(files, *args: str) -> list[str]:
    return [
        *args,
        "--bundle", str(files / "bundle.json"), "--pins", str(files / "pins.json"),
        "--nats", "nats://127.0.0.1:1", "--authority-key", str(files / "authority.key"),
        "--pin-file", str(files / "pin"),
    ]  # fmt: skip


def test_an_existing_output_file_is_never_overwritten(files, capsys):
    (files / "out").write_bytes(b"kept")
    code = cli.main(["vault", "recover", "alice", *run(files, "--out", str(files / "out"))])
    assert code == 2
    assert "the output file exists" in capsys.readouterr().err
    assert (files / "out").read_bytes() == b"kept"


def test_an_empty_pin_is_refused(files, capsys):
    (files / "pin").write_text("\n")
    code = cli.main(["vault", "recover", "alice", *run(files, "--out", "-")])
    assert code == 2
    assert "the PIN is empty" in capsys.readouterr().err


def test_a_bundle_that_is_not_accepted_sends_nothing(files, capsys):
    code = cli.main(["vault", "recover", "alice", *run(files, "--out", "-")])
    assert code == 2
    assert "the bundle is not accepted" in capsys.readouterr().err


def test_the_pin_is_never_an_argument(files, capsys):
    with pytest.raises(SystemExit):
        cli.main(["vault", "recover", "alice", *run(files, "--out", "-", "--pin", "2468")])
    err = capsys.readouterr().err
    assert "--pin" in err and ("ambiguous" in err or "unrecognized" in err)
