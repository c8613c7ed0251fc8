"""Where the packaged recipes and cards, and the cache, are found."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from dpo_recipe.resources import cache_root, packaged_dir


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
