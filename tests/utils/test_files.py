"""dpo_recipe.utils.files: directories and files that appear whole or not at all, and where the packaged
recipes, cards and the cache are found."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from conftest import REPO

from dpo_recipe.errors import CacheError, DataError
from dpo_recipe.utils.files import (
    CACHE_MARKER,
    cache_root,
    cached_folder,
    packaged_dir,
    write_dir_atomically,
    write_file_atomically,
)


def fill(text: str):
    def write(staging: Path) -> None:
        (staging / "part.txt").write_text(text)

    return write


def fail_halfway(staging: Path) -> None:
    (staging / "part.txt").write_text("half")
    raise OSError("disk full")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_new_directory_appears_whole_and_readable(tmp_path: Path) -> None:
    target = write_dir_atomically(tmp_path / "nested" / "d", fill("new"))
    assert (target / "part.txt").read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o755
    assert leftovers(target.parent) == []


def test_a_failed_write_leaves_the_old_directory_and_no_staging(tmp_path: Path) -> None:
    target = write_dir_atomically(tmp_path / "d", fill("old"))
    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(target, fail_halfway)
    assert (target / "part.txt").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_existing_directory_replaced_kept_or_refused(tmp_path: Path) -> None:
    target = write_dir_atomically(tmp_path / "d", fill("first"))
    write_dir_atomically(target, fill("second"))
    assert (target / "part.txt").read_text() == "second"
    write_dir_atomically(target, fill("third"), if_exists="keep")  # a cache entry: the first one filled wins
    assert (target / "part.txt").read_text() == "second"
    with pytest.raises(DataError) as err:
        write_dir_atomically(target, fill("fourth"), if_exists="refuse")
    assert str(err.value) == f"{target} already exists and is not empty. Choose another --out or pass --overwrite."
    assert (target / "part.txt").read_text() == "second"
    assert leftovers(tmp_path) == []


def test_refuse_still_fills_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_dir_atomically(tmp_path / "d", fill("new"), if_exists="refuse")
    assert (tmp_path / "d" / "part.txt").read_text() == "new"


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_file_atomically(target, lambda staging: staging.write_text("{}"))
    assert target.read_text() == "{}" and target.stat().st_mode & 0o777 == 0o644

    def fail(staging: Path) -> None:
        staging.write_text('{"half":')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file_atomically(target, fail)
    assert target.read_text() == "{}"
    assert leftovers(tmp_path) == []


def test_packaged_dirs_resolve_in_a_source_checkout() -> None:
    assert packaged_dir("recipes") == REPO / "recipes"
    assert (packaged_dir("recipes") / "tiny-ja.yaml").is_file()
    assert packaged_dir("cards") == REPO / "cards"
    with pytest.raises(FileNotFoundError, match="missing its 'nothing-here/' directory: reinstall"):
        packaged_dir("nothing-here")


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DPO_RECIPE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("DPO_RECIPE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "dpo_recipe"


def test_replacing_a_link_replaces_the_link_and_leaves_its_target(tmp_path: Path) -> None:
    target = tmp_path / "users-folder"
    target.mkdir()
    (target / "thesis.tex").write_text("mine")
    link = tmp_path / "export"
    link.symlink_to(target)
    write_dir_atomically(link, lambda staging: (staging / "model.gguf").write_text("new"), if_exists="replace")
    assert not link.is_symlink() and (link / "model.gguf").read_text() == "new"
    assert (target / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "users-folder"]  # no .old left behind


def test_a_killed_writers_staging_is_removed_by_the_next_write(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    abandoned = tmp_path / f".export.{dead}.abc123"
    (abandoned / "model.gguf").parent.mkdir()
    (abandoned / "model.gguf").write_bytes(b"a whole-looking model")
    alive = tmp_path / f".export.{os.getpid()}.def456"  # a live writer's: kept
    alive.mkdir()
    write_dir_atomically(tmp_path / "export", lambda staging: (staging / "model.gguf").write_text("new"))
    assert not abandoned.exists() and alive.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "export"]


def test_cache_root_refuses_an_empty_value_or_a_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DPO_RECIPE_CACHE", "")
    with pytest.raises(CacheError, match="DPO_RECIPE_CACHE is set but empty, which would put the cache in the current"):
        cache_root()
    (tmp_path / "file").write_text("x")
    for value in (tmp_path / "file", tmp_path / "file" / "below"):
        monkeypatch.setenv("DPO_RECIPE_CACHE", str(value))
        with pytest.raises(CacheError, match=f"{tmp_path / 'file'} is a file, not a folder"):
            cache_root()


FOLDER_DAMAGE = {
    "bit-flipped": lambda data: data[:-1] + bytes([data[-1] ^ 0x01]),
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "random": lambda data: random.Random(0).randbytes(len(data)),
}


def _build(folder: Path) -> None:
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "config.json").write_text('{"layers": 2}')


def test_a_damaged_cached_folder_is_rebuilt_with_a_warning(tmp_path: Path, monkeypatch, capsys) -> None:
    """The GGUF conversions and the tiny model: checked against the hashes recorded when they were built."""
    monkeypatch.setenv("DPO_RECIPE_CACHE", str(tmp_path / "cache"))
    target = cache_root() / "gguf" / "model-0123456789abcdef"
    assert cached_folder(target, _build) == target and (tmp_path / "cache" / CACHE_MARKER).is_file()
    pristine = {p.name: p.read_bytes() for p in target.iterdir()}
    capsys.readouterr()
    assert cached_folder(target, lambda folder: pytest.fail("rebuilt a whole copy")) == target
    for damage, change in FOLDER_DAMAGE.items():
        (target / "weights.bin").write_bytes(change(pristine["weights.bin"]))
        assert cached_folder(target, _build) == target
        assert {p.name: p.read_bytes() for p in target.iterdir()} == pristine, damage
        expected = f"Warning: cache entry {target} is damaged (files unlike their recorded sha256: weights.bin); "
        assert capsys.readouterr().err == expected + "rebuilding it.\n", damage
    (target / "config.json").unlink()
    assert cached_folder(target, _build) == target and (target / "config.json").is_file()
    assert "(files unlike their recorded sha256: config.json)" in capsys.readouterr().err


def test_a_cached_folder_that_cannot_be_written_is_built_elsewhere(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tiny").write_text("a file where the kind's folder should be")
    monkeypatch.setenv("DPO_RECIPE_CACHE", str(tmp_path / "cache"))
    built = cached_folder(cache_root() / "tiny" / "0123456789abcdef", _build)
    assert built.parent != tmp_path / "cache" / "tiny" and (built / "weights.bin").is_file()
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("Warning: cache not writable: ") and warning.endswith(", continuing without it.")
