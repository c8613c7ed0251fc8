"""Loading tokenizers and models from a directory, and checking LoRA targets against the architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_recipe.config import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.model import (
    check_lora_targets,
    linear_module_names,
    load_config,
    load_model,
    load_tokenizer,
    skeleton_model,
)

LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_not_a_model_is_clear(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="no tokenizer could be loaded"):
        load_tokenizer(ModelSection(name_or_path=str(tmp_path)))
    with pytest.raises(ModelError, match=f"model.name_or_path '{tmp_path}' is not a model"):
        load_config(ModelSection(name_or_path=str(tmp_path)))


def test_skeleton_has_the_architecture_and_no_weights(tiny_model: Path) -> None:
    skeleton = skeleton_model(ModelSection(name_or_path=str(tiny_model)))
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert linear_module_names(skeleton) == LLAMA_LINEAR  # lm_head is never a LoRA target


def test_lora_targets_are_checked_by_name(tiny_model: Path) -> None:
    skeleton = skeleton_model(ModelSection(name_or_path=str(tiny_model)))
    check_lora_targets(["q_proj", "v_proj"], skeleton)
    check_lora_targets("all-linear", skeleton)
    with pytest.raises(ModelError) as err:
        check_lora_targets(["q_proj", "c_attn"], skeleton)
    assert str(err.value) == (
        "lora.target_modules: c_attn not found in the model. "
        f"Its linear modules are: {', '.join(LLAMA_LINEAR)} (or use 'all-linear')."
    )


def test_load_model_in_the_recipe_dtype(tiny_model: Path) -> None:
    import torch

    section = ModelSection(name_or_path=str(tiny_model), dtype="bfloat16")
    model = load_model(section)
    skeleton = skeleton_model(section)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in skeleton.parameters())
    with pytest.raises(ModelError, match="could not be loaded"):
        load_model(ModelSection(name_or_path=str(tiny_model / "absent")))
