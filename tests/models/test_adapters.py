"""Adapters: what is refused before any weights load (pickles, wrong shapes, no base), and what loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dpo_recipe.config.schema import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.models.adapters import adapter_base, check_adapter_matches_base, resolve_adapter_dir
from dpo_recipe.models.loading import skeleton_model

Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"  # 64 -> 64 in the tiny model
V_PROJ = "base_model.model.model.layers.1.self_attn.v_proj"  # 64 -> 32 (two KV heads of 16)


def adapter_dir(tmp_path: Path, *files: str) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    for name in files:
        (folder / name).write_bytes(b"weights")
    return folder


def test_a_pickle_only_adapter_is_refused_with_the_conversion_to_run(tmp_path: Path) -> None:
    folder = adapter_dir(tmp_path, "adapter_model.bin")
    with pytest.raises(ModelError) as err:
        resolve_adapter_dir(str(folder))
    message = str(err.value)
    assert f"{folder} holds its adapter weights only as a pickle file (adapter_model.bin)" in message
    assert f"torch.load('{folder / 'adapter_model.bin'}', weights_only=True)" in message
    assert f"'{folder / 'adapter_model.safetensors'}'" in message


def test_safetensors_beside_a_pickle_is_accepted(tmp_path: Path) -> None:
    folder = adapter_dir(tmp_path, "adapter_model.bin", "adapter_model.safetensors")
    assert resolve_adapter_dir(str(folder)) == folder


def test_what_is_not_an_adapter_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a LoRA adapter directory"):
        resolve_adapter_dir(str(tmp_path))
    with pytest.raises(ModelError, match="neither a directory nor a Hub id USER/NAME"):
        resolve_adapter_dir(str(tmp_path / "x.bin"))


def test_base_comes_from_the_recipe_or_the_override(tmp_path: Path) -> None:
    folder = adapter_dir(tmp_path, "adapter_model.safetensors")
    with pytest.raises(ModelError, match="has no recipe.yaml naming its base model: pass --base MODEL"):
        adapter_base(str(folder))
    _, _, section = adapter_base(str(folder), base="some/base")
    assert (section.name_or_path, section.gguf_file) == ("some/base", None)
    (folder / "recipe.yaml").write_text("model: {name_or_path: recorded/base, revision: v1}\n")
    found, recipe, section = adapter_base(str(folder))
    assert found == folder and recipe.model.revision == "v1"
    assert (section.name_or_path, section.revision) == ("recorded/base", "v1")


def test_adapter_shapes_are_checked_against_the_base(tmp_path: Path, tiny_model: Path) -> None:
    skeleton = skeleton_model(ModelSection(name_or_path=str(tiny_model)))
    folder = adapter_dir(tmp_path)
    weights = {
        f"{Q_PROJ}.lora_A.weight": torch.zeros(8, 64),
        f"{Q_PROJ}.lora_B.weight": torch.zeros(64, 8),
        f"{V_PROJ}.lora_A.weight": torch.zeros(8, 64),
        f"{V_PROJ}.lora_B.weight": torch.zeros(32, 8),
    }
    save_file(weights, folder / "adapter_model.safetensors")
    check_adapter_matches_base(folder, skeleton, "tiny")

    weights[f"{V_PROJ}.lora_B.weight"] = torch.zeros(48, 8)
    weights["base_model.model.model.layers.9.mlp.up_proj.lora_A.weight"] = torch.zeros(8, 64)
    save_file(weights, folder / "adapter_model.safetensors")
    with pytest.raises(ModelError) as err:
        check_adapter_matches_base(folder, skeleton, "tiny")
    assert "does not fit base model 'tiny'" in str(err.value)
    assert "model.layers.1.self_attn.v_proj has size 32, the adapter expects 48" in str(err.value)
    assert "model.layers.9.mlp.up_proj does not exist" in str(err.value)

    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="no adapter_model.safetensors"):
        check_adapter_matches_base(folder, skeleton, "tiny")


@pytest.mark.parametrize("typed", ["/nonexistent", "./run/out", "~/outputs", "a/b/c", "bad id/x"])
def test_a_mistyped_path_is_not_sent_to_the_hub(typed: str) -> None:
    with pytest.raises(ModelError, match=r"is neither a directory nor a Hub id USER/NAME\. Give the output directory"):
        resolve_adapter_dir(typed)


def test_only_the_users_own_run_folder_keeps_its_recorded_local_paths(tmp_path: Path) -> None:
    """A pushed adapter downloaded to a folder (hf download --local-dir) carries a stranger's recipe.yaml: its local
    paths are refused as on the Hub; a run folder the user trained (it holds the run marker) keeps them."""
    import yaml

    from dpo_recipe.config.trust import RUN_MARKER
    from dpo_recipe.errors import RecipeError

    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    recipe = {"model": {"name_or_path": "/home/bob/tiny"}, "data": {"source": "/home/bob/private.jsonl"}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError) as refused:
        adapter_base(str(folder))
    assert "model.name_or_path is a local path ('/home/bob/tiny'); give it yourself (--base MODEL)" in str(
        refused.value
    )
    assert "data.source is a local path" in str(refused.value)
    (folder / RUN_MARKER).write_text("{}")
    _, _, section = adapter_base(str(folder))
    assert section.name_or_path == "/home/bob/tiny" and section.trust_remote_code is False
