"""Recipes in a row (dpo_recipe.config.stages): a ``stages:`` file is read, its mistakes named before anything
trains, and a stage's settings give way to the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.config.stages import Stage, read_stages, with_user_settings
from dpo_recipe.errors import RecipeError


def chain(tmp_path: Path, text: str, name: str = "chain.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_stages_are_read_with_their_settings_and_a_folder_per_chain(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("model: {}\n")
    path = chain(
        tmp_path,
        "stages:\n"
        "  - recipe: tiny-ja\n"
        "    set: {training.objective: sft, lora.trainable_tokens: ['<a>', 'b c'], training.learning_rate: 1.0e-3}\n"
        "  - mine.yaml\n",
    )
    listed = read_stages(path)
    assert listed is not None and listed.output_dir == "outputs/chain"  # the file's name, unless output_dir:
    first, second = listed.stages
    assert first == Stage(
        "tiny-ja",
        ('training.objective="sft"', 'lora.trainable_tokens=["<a>", "b c"]', "training.learning_rate=0.001"),
    )
    assert second == Stage(str(tmp_path / "mine.yaml"))  # a path beside the stages file
    recipe = load_recipe(first.recipe, first.overrides)  # the items parse back to the values written
    assert (recipe.training.objective, recipe.lora.trainable_tokens) == ("sft", ["<a>", "b c"])
    assert with_user_settings(first, ("training.learning_rate=0.1", "data.seed=3")) == (
        'training.objective="sft"',
        'lora.trainable_tokens=["<a>", "b c"]',
        "training.learning_rate=0.1",
        "data.seed=3",
    )
    assert read_stages(chain(tmp_path, "model: {name_or_path: x}\n", "plain.yaml")) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages: []\n", r"'stages:' must be a list of one or more recipes"),
        ("stages: tiny-ja\n", r"'stages:' must be a list"),
        ("stages: [tiny-ja]\ntraining: {beta: 0.2}\n", r"holds 'stages:' and optionally 'output_dir:', not training"),
        ("stages: [tiny-ja]\noutput_dri: x\n", r"not output_dri; did you mean output_dir\?"),
        ("stages: [tiny-ja]\noutput_dir: ''\n", r"output_dir must be a folder path"),
        ("stages: [{set: {a.b: 1}}]\n", r"stage 1 must name its recipe"),
        ("stages: [tiny-ja, {recipe: tiny-ja, sett: {}}]\n", r"stage 2 has sett; did you mean set\?"),
        ("stages: [{recipe: tiny-ja, set: [1]}]\n", r"stage 1: 'set:' must map SECTION.KEY to a value, got list"),
        ("stages: [tiny-jaa]\n", r"stage 1: Recipe 'tiny-jaa' is neither .*Did you mean 'tiny-ja'"),
        (
            "stages: [{recipe: tiny-ja, set: {model.init_adapter: x}}]\n",
            r"stage 1 sets model.init_adapter: in a chain, stage N writes OUTPUT_DIR/stage-N and starts from",
        ),
        ("stages: [tiny-ja, chain.yaml]\n", r"stage 2 names .*chain.yaml, itself a list of stages; chains do not nest"),
        ("stages: [tiny-ja-sft-dpo]\n", r"stage 1 names tiny-ja-sft-dpo, itself a list of stages"),
    ],
)
def test_a_malformed_stage_list_is_one_paragraph_naming_file_and_stage(tmp_path: Path, text: str, message: str) -> None:
    path = chain(tmp_path, text)
    with pytest.raises(RecipeError, match=message) as err:
        read_stages(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_stages_file_is_not_one_run_and_says_how_to_train_it(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"lists stages .*'dpo-recipe train --recipe tiny-ja-sft-dpo'"):
        load_recipe("tiny-ja-sft-dpo")


def test_a_dpo_recipe_switched_to_another_objective_leaves_its_dpo_keys_out(capsys) -> None:
    recipe = load_recipe("gemma3-270m-ja", ["training.objective=sft", "lora.trainable_tokens=[]"])
    assert (recipe.training.loss_type, recipe.training.beta, recipe.lora.token_learning_rate) == ("sigmoid", 0.1, None)
    note = capsys.readouterr().err
    assert "gemma3-270m-ja.yaml was written for objective dpo; under training.objective=sft its training.loss_" in note
    with pytest.raises(RecipeError, match=r"training.beta: read by the preference losses only"):  # the user's own
        load_recipe("gemma3-270m-ja", ["training.objective=sft", "lora.trainable_tokens=[]", "training.beta=0.3"])
    kto = load_recipe("gemma3-270m-ja", ["training.objective=kto", "training.per_device_batch_size=2"])
    assert (kto.training.packing, kto.training.beta) == (False, 0.1)  # KTO reads beta
