"""prepare_output_dir + atomic_directory(owned=...): never delete what we did not create."""

import os

import pytest

from bertscale.atomic import atomic_directory, prepare_output_dir
from bertscale.errors import ConfigError


def check(path, **kwargs):
    return prepare_output_dir(path, key="output_dir", overwrite_hint="overwrite=true", **kwargs)


def test_new_and_empty_directories_are_accepted_and_nothing_is_created(tmp_path):
    assert check(tmp_path / "a" / "b", overwrite=False) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty", overwrite=False)


def test_non_empty_needs_overwrite_or_a_reusable_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match=r"output_dir: .* is not empty \(notes.txt\); .*overwrite=true"):
        check(tmp_path, overwrite=False)
    check(tmp_path, overwrite=True)
    check(tmp_path, overwrite=False, reusable=lambda p: (p / "notes.txt").is_file())


def test_inputs_may_not_overlap_the_output(tmp_path):
    source = tmp_path / "run"
    source.mkdir()
    for out, relation in ((source, "is"), (source / "x", "is inside"), (tmp_path, "contains")):
        with pytest.raises(ConfigError, match=f"{out} {relation} the input {source}"):
            check(out, overwrite=True, inputs=[None, str(source)])
    check(tmp_path / "sibling", overwrite=False, inputs=[source, tmp_path / "missing"])


def test_files_and_unwritable_places_are_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check(tmp_path / "f", overwrite=True)
    with pytest.raises(ConfigError, match=r"cannot create .*/f/sub: .*/f is a file"):
        check(tmp_path / "f" / "sub", overwrite=True)
    if os.geteuid() == 0:
        return  # root may write anywhere: the permission case cannot occur
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check(locked / "out", overwrite=True)
    finally:
        locked.chmod(0o700)


def test_owned_publication_replaces_only_our_entries(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("theirs")
    (out / "old-000000.tar").write_text("stale shard")  # ours (by the predicate), not rewritten
    (out / "manifest.json").write_text("old")
    with atomic_directory(out, owned=lambda name: name.endswith(".tar") or name == "manifest.json") as tmp:
        (tmp / "manifest.json").write_text("new")
        (tmp / "new-000000.tar").write_text("shard")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "new-000000.tar", "notes.txt"]
    assert (out / "notes.txt").read_text() == "theirs" and (out / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp or .old dirs left


def test_owned_publication_of_a_failed_write_keeps_everything(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out, owned=lambda name: True) as tmp:
        (tmp / "manifest.json").write_text("half")
        raise RuntimeError("crash")
    assert (out / "manifest.json").read_text() == "old"
