import pytest

from bertscale.atomic import atomic_directory, atomic_write


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_atomic_directory_replaces_only_when_complete(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as d:
        (d / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "a").write_text("2")
        raise RuntimeError("crash")
    assert (target / "a").read_text() == "1"
    with atomic_directory(target) as d:
        (d / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
