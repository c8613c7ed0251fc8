"""Loading tokenizers and models from a directory, and checking LoRA targets against the architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_recipe.config.schema import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.models.loading import (
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


def test_a_packaged_chat_template_round_trips_through_the_saved_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    """A base model gets Gemma's turn markers; the prompt renders as a prefix of prompt + answer, and the
    template travels with the tokenizer that is saved beside the adapter."""
    from transformers import AutoTokenizer

    from dpo_recipe.data.tokens import encode_pair

    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tiny_model), chat_template="gemma"))
    prompt = [{"role": "user", "content": "AIとは何ですか？"}]
    answer = [{"role": "assistant", "content": "AIとは人工知能のことです。"}]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert (
        rendered == "<start_of_turn>user\nAIとは何ですか？<end_of_turn>\n<start_of_turn>model\n"
    )  # no BOS: tiny has none
    whole = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    assert whole == rendered + "AIとは人工知能のことです。<end_of_turn>\n"
    pair = encode_pair(tokenizer, {"prompt": prompt, "chosen": answer, "rejected": answer})
    assert pair.prompt_is_prefix
    assert tokenizer.decode(pair.chosen_ids) == "AIとは人工知能のことです。<end_of_turn>\n"

    tokenizer.save_pretrained(tmp_path / "adapter")
    assert AutoTokenizer.from_pretrained(tmp_path / "adapter").chat_template == tokenizer.chat_template


def test_an_unknown_chat_template_lists_the_packaged_ones(tiny_model: Path) -> None:
    with pytest.raises(ModelError, match=r"model.chat_template 'gemmma': no such file.*packaged: gemma\)"):
        load_tokenizer(ModelSection(name_or_path=str(tiny_model), chat_template="gemmma"))


def test_builtin_tiny_is_built_once_and_cached() -> None:
    from dpo_recipe.models.loading import resolve_model_source

    first = resolve_model_source(ModelSection(name_or_path="builtin:tiny"))
    assert (Path(first) / "config.json").is_file() and (Path(first) / "tokenizer.json").is_file()
    mtime = (Path(first) / "config.json").stat().st_mtime_ns
    assert resolve_model_source(ModelSection(name_or_path="builtin:tiny")) == first
    assert (Path(first) / "config.json").stat().st_mtime_ns == mtime


def test_trainable_tokens_must_each_be_one_token(tiny_model: Path) -> None:
    from dpo_recipe.models.loading import load_tokenizer, trainable_token_ids

    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tiny_model)))
    assert trainable_token_ids(["<|im_start|>", "<|im_end|>"], tokenizer) == [
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    assert trainable_token_ids([], tokenizer) == []
    with pytest.raises(ModelError, match=r"lora.trainable_tokens: '<end_of_turn>' is \d+ tokens in this tokenizer"):
        trainable_token_ids(["<|im_end|>", "<end_of_turn>"], tokenizer)
