"""The tiny random-init model that tests and smoke runs train offline."""

from __future__ import annotations

from pathlib import Path

from conftest import invoke

from dpo_recipe.config.schema import ModelSection
from dpo_recipe.models.loading import load_tokenizer


def test_cli_builds_the_tiny_model(runner, tmp_path: Path) -> None:
    result = invoke(runner, "model", "tiny", "--out", tmp_path / "tiny")
    assert result.exit_code == 0
    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tmp_path / "tiny")))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"  # no pad token of its own, like GPT-2


def test_tiny_model_has_the_promised_shape(tiny_model: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model)
    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tiny_model)))
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 64, 2)
    assert config.vocab_size == len(tokenizer) <= 2048
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.apply_chat_template([{"role": "user", "content": "質問"}], tokenize=False) == (
        "<|im_start|>user\n質問<|im_end|>\n"
    )


def test_tiny_ja_runs_from_an_empty_directory(tmp_path: Path) -> None:
    """The packaged recipe names builtin:tiny, so no `dpo-recipe model tiny` step and no Hub are needed."""
    import os
    import subprocess
    import sys

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "DPO_RECIPE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "dpo_recipe.train", "--recipe", "tiny-ja", "--dry-run"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dry run finished" in result.stdout
    assert list(empty.iterdir()) == []  # a dry run writes nothing where it runs
    assert len(list((tmp_path / "cache" / "tiny").iterdir())) == 1


def test_a_damaged_tiny_model_in_the_cache_is_rebuilt(capsys) -> None:
    """A flipped bit in the cached weights: rebuilt with a warning, never loaded."""
    from dpo_recipe.models.tiny import cached_tiny_model

    cached = cached_tiny_model()
    weights = cached / "model.safetensors"
    pristine = weights.read_bytes()
    weights.write_bytes(pristine[:-1] + bytes([pristine[-1] ^ 0x01]))
    capsys.readouterr()
    assert cached_tiny_model() == cached and weights.read_bytes() == pristine  # seeded: the same bytes again
    assert capsys.readouterr().err.startswith(f"Warning: cache entry {cached} is damaged (files unlike")
