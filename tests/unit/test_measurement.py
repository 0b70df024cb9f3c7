"""The software measurement: a hash over the installed distribution's packages."""

import os
import shutil

import pytest

from node.measurement import (
    INSTALL_ROOT,
    MEASURED_PACKAGES,
    UnmeasurableInstall,
    measure,
    measured_files,
)


@pytest.fixture
def install(tmp_path):
    for package in MEASURED_PACKAGES:
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


def test_bytecode_caches_do_not_count_but_sourceless_bytecode_does(install):
    before = measure(install)
    cache = install / "node" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "daemon.cpython-311.pyc").write_bytes(b"\x00" * 16)
    assert measure(install) == before
    (install / "node" / "stray.pyc").write_bytes(b"\x00")  # importable as node.stray
    assert measure(install) != before


@pytest.mark.parametrize("package", ["ops", "orchestrator", "cosigner"])
def test_every_package_the_node_process_runs_counts(install, package):
    """``hsmfleet node run`` starts in ops.cli, which imports every part's verbs."""
    before = measure(install)
    (install / package / "patched.py").write_text("x = 1\n")
    assert measure(install) != before


def test_files_outside_the_distribution_do_not_count(install):
    before = measure(install)
    (install / "tests").mkdir()
    (install / "tests" / "test_x.py").write_text("x = 1\n")
    (install / "README.md").write_text("notes\n")
    assert measure(install) == before


def test_a_symbolic_link_makes_the_install_unmeasurable(install, tmp_path_factory):
    """A linked directory is importable, yet a walk that skips links would not measure it."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "evil.py").write_text("x = 1\n")
    os.symlink(outside, install / "node" / "linked")
    with pytest.raises(UnmeasurableInstall, match="symbolic link") as info:
        measure(install)
    assert info.value.detail["path"] == "node/linked"
    (install / "node" / "linked").unlink()
    os.symlink(outside / "evil.py", install / "messages" / "evil.py")
    with pytest.raises(UnmeasurableInstall):
        measured_files(install)


def test_a_special_file_makes_the_install_unmeasurable(install):
    os.mkfifo(install / "node" / "pipe.py")
    with pytest.raises(UnmeasurableInstall, match="special file"):
        measure(install)
