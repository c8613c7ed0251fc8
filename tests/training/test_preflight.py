"""The dry run: token counts, truncation, the LoRA parameter count and the report, on inputs small
enough to compute by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_overrides

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.config.schema import ModelSection
from dpo_recipe.errors import DataError, RecipeError
from dpo_recipe.models.loading import skeleton_model
from dpo_recipe.training.preflight import lora_summary, measure_tokens, refuse_emptied_completions


@pytest.fixture(scope="module")
def letters():
    """One token per lowercase letter plus ``<eos>``, no BOS: every length is the number of characters."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def test_token_counts_and_truncation_are_those_trl_would_see(letters) -> None:
    rows = [
        {"prompt": "abc", "chosen": "de", "rejected": "fghi"},  # 3 + max(2, 4) + EOS = 8: fits max_length 8
        {"prompt": "abcd", "chosen": "efghi", "rejected": "j"},  # 4 + 5 + EOS = 10: truncated
        {"prompt": "abcdefgh", "chosen": "x", "rejected": "y"},  # the prompt alone fills max_length
    ]
    report = measure_tokens(rows, letters, max_length=8)
    assert report.pairs == 3
    assert report.prompt_lengths == [3, 4, 8]
    assert report.completion_lengths == [3, 5, 6, 2, 2, 2]  # chosen, rejected per pair, EOS included
    assert report.truncated_pairs == 2
    assert report.emptied_pairs == [3]
    assert (report.not_prefix_pairs, report.double_bos_pairs, report.missing_eos_pairs) == (0, 0, 0)


def test_pairs_whose_template_renders_the_prompt_differently_are_counted(tiny_model: Path) -> None:
    from dpo_recipe.models.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tiny_model)))
    rows = [
        {
            "prompt": [{"role": "user", "content": "AIとは？"}],
            "chosen": [{"role": "assistant", "content": "人工知能です。"}],
            "rejected": [{"role": "assistant", "content": "不明。"}],
        },
        {"prompt": "AIとは？", "chosen": "人工知能です。", "rejected": "不明。"},
    ]
    assert measure_tokens(rows, tokenizer, max_length=128).template_not_prefix_rows == []
    tokenizer.chat_template = "{% if add_generation_prompt %}[today]{% endif %}" + tokenizer.chat_template
    report = measure_tokens(rows, tokenizer, max_length=128)
    assert report.template_not_prefix_rows == [1]  # plain text is read as is: no template to disagree with
    assert report.first_pair.prompt.startswith("[today]<|im_start|>user\nAIとは？")


def test_pairs_with_no_room_for_the_answer_are_refused(letters) -> None:
    rows = [{"prompt": "abcdefghij", "chosen": "k", "rejected": "l"}, {"prompt": "ab", "chosen": "c", "rejected": "d"}]
    report = measure_tokens(rows, letters, max_length=8)
    with pytest.raises(DataError) as err:
        refuse_emptied_completions(report, 8)
    assert str(err.value) == (
        "training.max_length 8 leaves no room for the answer in 1 of 2 training pairs (rows 1): their prompts "
        "alone are 8+ tokens (longest 10). Raise training.max_length to at least 42 or shorten those prompts."
    )
    refuse_emptied_completions(measure_tokens(rows[1:], letters, max_length=8), 8)


def test_lora_parameter_count_is_rank_times_fan_in_plus_fan_out(tiny_model: Path) -> None:
    recipe = load_recipe("tiny-ja", tiny_overrides(tiny_model, "lora.r=4"))
    skeleton = skeleton_model(ModelSection(name_or_path=str(tiny_model)))
    matched, trainable = lora_summary(skeleton, recipe)
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert dict(matched) == {"q_proj": 2, "v_proj": 2}
    # per layer: q_proj 64 -> 64 and v_proj 64 -> 32 (two KV heads of 16); two layers
    assert trainable == 2 * (4 * (64 + 64) + 4 * (64 + 32))


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("training.per_device_batch_size=1000000", "training.per_device_batch_size or training.max_length"),
        ("training.max_length=1000000000", "training.per_device_batch_size or training.max_length"),
        ("lora.r=100000000", "lora.r or lora.target_modules"),
    ],
)
def test_sizes_far_past_the_machine_are_refused_before_weights_load(
    tiny_model: Path, tmp_path: Path, setting: str, named: str
) -> None:
    from dpo_recipe.train import run

    with pytest.raises(RecipeError) as refused:
        run("tiny-ja", [f"model.name_or_path={tiny_model}", setting], output_dir=str(tmp_path / "x"), dry_run=True)
    assert f"Lower {named}" in str(refused.value) and "of RAM on this machine (no GPU)" in str(refused.value)
    assert not (tmp_path / "x").exists()


def test_the_builtin_generator_is_bounded() -> None:
    with pytest.raises(RecipeError, match=r"data.num_pairs: must be <= 1000000, got 1000000000"):
        load_recipe("tiny-ja", ["data.num_pairs=1000000000"])
    with pytest.raises(RecipeError, match=r"training.num_epochs: must be <= 1000.0, got 1000000000000.0"):
        load_recipe("tiny-ja", ["training.num_epochs=1000000000000.0"])
    with pytest.raises(RecipeError, match=r"eval.max_new_tokens: must be <= 32768, got 1000000000"):
        load_recipe("tiny-ja", ["eval.max_new_tokens=1000000000"])
