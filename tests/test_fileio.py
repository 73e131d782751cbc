"""Atomic writes: the file appears whole or not at all, with the permissions of an ordinary new file."""

from __future__ import annotations

import os
import stat

import pytest

from unweather.fileio import atomic_path, write_bytes_atomic, write_text_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_0666_less_the_umask_like_open(tmp_path, umask, mask, mode):
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary open() makes, for comparison
        f.write("x")
    write_bytes_atomic(tmp_path / "a.bin", b"data")
    write_text_atomic(tmp_path / "sub" / "b.json", "{}\n")
    with atomic_path(tmp_path / "c.onnx", suffix=".onnx") as tmp:
        tmp.write_bytes(b"graph")
    assert _mode(tmp_path / "plain.txt") == mode
    for path in (tmp_path / "a.bin", tmp_path / "sub" / "b.json", tmp_path / "c.onnx"):
        assert _mode(path) == mode, path
    assert (tmp_path / "sub" / "b.json").read_text() == "{}\n" and (tmp_path / "c.onnx").read_bytes() == b"graph"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        write_text_atomic(target, b"not text")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_the_temporary_file_is_hidden_beside_the_target_and_replaced_in_one_step(tmp_path):
    target = tmp_path / "graph.onnx"
    target.write_bytes(b"previous")
    with atomic_path(target, suffix=".onnx") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".graph.onnx.") and tmp.suffix == ".onnx"
        assert tmp.exists() and target.read_bytes() == b"previous"  # readers still see the old file
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and not tmp.exists()


def test_saved_checkpoints_get_the_permissions_of_an_ordinary_new_file(tmp_path, umask):
    # safetensors writes its file anew with mode 0600; a service running as another user must read it.
    from unweather.models import build, save

    umask(0o022)
    save(build("student_small"), tmp_path / "net.safetensors")
    assert _mode(tmp_path / "net.safetensors") == 0o644
