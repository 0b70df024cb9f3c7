"""The software measurement: a hash over the installed node and messages files."""

import shutil

import pytest

from node.measurement import INSTALL_ROOT, measure, measured_files


@pytest.fixture
def install(tmp_path):
    for package in ("messages", "node"):
        shutil.copytree(
            INSTALL_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


def test_a_copy_of_the_install_measures_the_same(install):
    assert measure(install) == measure(INSTALL_ROOT)
    assert measure(install).startswith("sha256:") and len(measure(install)) == 7 + 64


def test_covers_both_packages_in_sorted_order(install):
    files = [p.as_posix() for p in measured_files(install)]
    assert "messages/attestation.py" in files and "node/measurement.py" in files
    assert files == sorted(files)


def test_changed_file_changes_it(install):
    before = measure(install)
    path = install / "node" / "daemon.py"
    path.write_bytes(path.read_bytes() + b"\n# patched\n")
    assert measure(install) != before


def test_added_removed_or_renamed_file_changes_it(install):
    before = measure(install)
    (install / "node" / "extra.py").write_text("x = 1\n")
    added = measure(install)
    assert added != before
    (install / "node" / "extra.py").rename(install / "node" / "other.py")
    assert measure(install) not in (before, added)
    (install / "node" / "other.py").unlink()
    assert measure(install) == before


def test_bytecode_caches_do_not_count(install):
    before = measure(install)
    cache = install / "node" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "daemon.cpython-311.pyc").write_bytes(b"\x00" * 16)
    (install / "node" / "stray.pyc").write_bytes(b"\x00")
    assert measure(install) == before


def test_other_packages_do_not_count(install):
    before = measure(install)
    (install / "orchestrator").mkdir()
    (install / "orchestrator" / "core.py").write_text("x = 1\n")
    assert measure(install) == before
