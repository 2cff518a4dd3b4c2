"""atomicfile: contents, fsyncs of files and folders, nothing left behind after a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kirim_events.atomicfile import fsync_dir, make_dirs, move_file, replace_file, write_new

UNENCODABLE = "half a pair: \ud800"  # str.encode() raises on it, after the file is opened


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_replace_file_writes_the_bytes_and_fsyncs_the_file_then_its_folder(
    tmp_path: Path, synced: list[Path]
) -> None:
    target = tmp_path / "state.json"
    replace_file(target, b"one")
    replace_file(target, "two \u00e9")  # str is written as UTF-8
    assert target.read_bytes() == "two \u00e9".encode()
    assert names(tmp_path) == ["state.json"]
    # each write: its temporary file beside the target, then the folder after the rename
    temps = [p for p in synced if p != tmp_path]
    assert synced == [temps[0], tmp_path, temps[1], tmp_path]
    assert all(p.parent == tmp_path and p.name.startswith(".state.json.") for p in temps)


def test_replace_file_failing_mid_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        replace_file(target, UNENCODABLE)
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["state.json"]


def test_replace_file_failing_at_the_rename_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.mkdir()  # a file cannot replace a folder: the rename fails after the write
    (target / "kept").write_bytes(b"x")
    with pytest.raises(IsADirectoryError, match="Is a directory"):
        replace_file(target, b"new")
    assert names(tmp_path) == ["state.json"]
    assert names(target) == ["kept"]


def test_replace_file_into_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No such file"):
        replace_file(tmp_path / "missing" / "state.json", b"x")
    assert names(tmp_path) == []


def test_write_new_creates_and_fsyncs_the_file_and_its_folder(
    tmp_path: Path, synced: list[Path]
) -> None:
    target = tmp_path / "a.body"
    write_new(target, b"body")
    assert target.read_bytes() == b"body"
    assert synced == [target, tmp_path]


def test_write_new_refuses_an_existing_file_and_leaves_it_alone(tmp_path: Path) -> None:
    target = tmp_path / "a.body"
    target.write_bytes(b"first")
    with pytest.raises(FileExistsError, match="File exists"):
        write_new(target, b"second")
    assert target.read_bytes() == b"first"


def test_write_new_failing_mid_write_removes_the_part_written(tmp_path: Path) -> None:
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        write_new(tmp_path / "a.body", UNENCODABLE)
    assert names(tmp_path) == []


def test_write_new_without_fsync_syncs_nothing(tmp_path: Path, synced: list[Path]) -> None:
    write_new(tmp_path / "a.body", b"body", fsync=False)
    assert (tmp_path / "a.body").read_bytes() == b"body"
    assert synced == []


def test_write_new_of_a_temporary_file_syncs_it_not_its_folder(
    tmp_path: Path, synced: list[Path]
) -> None:
    # the lake's staged files: renamed other_disk at commit, whose folder is synced then
    write_new(tmp_path / "a.tmp", b"body", sync_folder=False)
    assert synced == [tmp_path / "a.tmp"]


def test_move_file_fsyncs_both_folders(tmp_path: Path, synced: list[Path]) -> None:
    (tmp_path / "done").mkdir()
    src, dst = tmp_path / "run.json", tmp_path / "done" / "run-1.json"
    src.write_bytes(b"cp")
    move_file(src, dst)
    assert (names(tmp_path), dst.read_bytes()) == (["done"], b"cp")
    assert synced == [tmp_path / "done", tmp_path]


def test_make_dirs_fsyncs_the_parent_of_each_folder_it_creates(
    tmp_path: Path, synced: list[Path]
) -> None:
    (tmp_path / "a").mkdir()
    make_dirs(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert synced == [tmp_path / "a", tmp_path / "a" / "b"]
    synced.clear()
    make_dirs(tmp_path / "a" / "b")  # there already: nothing to do
    make_dirs(tmp_path / "x" / "y", fsync=False)
    assert (tmp_path / "x" / "y").is_dir()
    assert synced == []


def test_make_dirs_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"")
    with pytest.raises(FileExistsError, match="File exists"):
        make_dirs(tmp_path / "a" / "b")
    assert (tmp_path / "a").read_bytes() == b""


def test_fsync_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="Not a directory"):
        fsync_dir(tmp_path / "a")


def test_move_file_to_another_filesystem_copies_then_removes(
    tmp_path: Path, other_disk: Path, synced: list[Path]
) -> None:
    """A rename across filesystems fails with EXDEV: a backfill whose finished checkpoint
    went to a done/ folder on another disk failed as the run ended."""
    src, dst = tmp_path / "run.json", other_disk / "run-1.json"
    src.write_bytes(b"cp")
    dst.write_bytes(b"older")
    move_file(src, dst)
    assert (names(tmp_path), names(other_disk), dst.read_bytes()) == ([], ["run-1.json"], b"cp")
    assert synced[-2:] == [other_disk, tmp_path]  # the copy's folder, then the source's
