"""dpo_recipe.artifacts.cards: the model card's hyper-parameter table is trl_args' recipe -> DPOConfig table."""

from __future__ import annotations

from dpo_recipe.artifacts.cards import render_model_card
from dpo_recipe.config.loader import load_recipe
from dpo_recipe.training.trl_args import RECIPE_TO_DPO_CONFIG, RECIPE_TO_LORA_CONFIG


def _table_rows(card_text: str) -> dict[str, tuple[str, str]]:
    section = card_text.split("## Training hyper-parameters")[1].split("##")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): (cells[1].strip(), cells[2].strip()) for cells in rows[2:]}  # header, then | --- |


def test_hyperparameter_table_lists_every_mapped_key_under_both_names() -> None:
    recipe = load_recipe("tiny-ja", ["training.beta=0.25", "training.num_epochs=3", "eval.batch_size=2"])
    card = render_model_card(recipe, {"train": {"pairs": 48}}, recipe_name="tiny-ja", command="c", plots=[])
    rows = _table_rows(str(card))
    for key, field in RECIPE_TO_DPO_CONFIG.items():
        assert rows[key][0] == field, key
    assert rows["training.beta"] == ("beta", "0.25")
    assert rows["training.num_epochs"] == ("num_train_epochs", "3.0")
    assert rows["eval.batch_size"] == ("per_device_eval_batch_size", "2")
    assert rows["training.lr_scheduler"] == ("lr_scheduler_type", recipe.training.lr_scheduler)
    assert rows["training pairs"] == ("train_dataset", "48")
    assert rows["lora.trainable_tokens"] == ("LoraConfig trainable_token_indices", "none")
    assert rows["lora.token_learning_rate"] == ("their optimizer group's lr", "as training")
    for key, field in RECIPE_TO_LORA_CONFIG.items():
        assert rows[key][0] == f"LoraConfig {field}", key
    assert rows["lora.r"] == ("LoraConfig r", str(recipe.lora.r))
    assert len(rows) == len(RECIPE_TO_DPO_CONFIG) + len(RECIPE_TO_LORA_CONFIG) + 3  # precision, token rate, pairs


def test_card_names_the_recipe_and_the_reproduce_command() -> None:
    command = "accelerate launch -m dpo_recipe.train --from-hub alice/run --set training.seed=1"
    card = str(render_model_card(load_recipe("tiny-ja"), {}, recipe_name="alice/run", command=command, plots=[]))
    assert "alice/run" in card and f"```bash\n{command}\n```" in card
    assert "No held-out evaluation was run." in card


def test_a_reference_free_objective_lists_the_cpo_fields_it_reads() -> None:
    recipe = load_recipe("tiny-ja", ["training.loss_type=simpo", "training.simpo_gamma=1.2"])
    rows = _table_rows(str(render_model_card(recipe, {}, recipe_name="tiny-ja", command="c", plots=[])))
    assert rows["training.simpo_gamma"] == ("CPOConfig simpo_gamma (PackedDPOTrainer)", "1.2")
    assert rows["training.cpo_alpha"] == ("CPOConfig cpo_alpha (PackedDPOTrainer)", "0.0")
    assert len(rows) == len(RECIPE_TO_DPO_CONFIG) + len(RECIPE_TO_LORA_CONFIG) + 3 + 2  # the two CPOConfig fields


def test_an_export_card_says_merge_or_quantized_and_how_to_run_it() -> None:
    from dpo_recipe.artifacts.cards import EXPORT_PLACEHOLDER, render_export_card

    manifest = {
        "format": "gguf",
        "tensor_type": "q8_0",
        "adapter": "alice/gemma3-270m-ja-dpo",
        "base_model": "google/gemma-3-270m",
        "license": "gemma",
        "as_conversation": True,
        "files": {"Modelfile": 355, "model.gguf": 291544672},
        "logit_check": {
            "max_abs_diff": 1.2,
            "relative_diff": 0.034,
            "tolerance": 0.05,
            "same_argmax": 0.97,
            "positions": 30,
        },
    }
    card = render_export_card(manifest, "ja-dpo-gguf")
    assert (card.data.base_model, card.data.base_model_relation, card.data.library_name) == (
        "google/gemma-3-270m",
        "quantized",
        "gguf",
    )
    assert f"hf download {EXPORT_PLACEHOLDER} --local-dir ja-dpo-gguf" in card.text
    assert 'ollama run ja-dpo-gguf "AIとは何ですか？"' in card.text and "| `model.gguf` | 291,544,672 |" in card.text
    assert "| q8_0 | 1.2 | 3.4 % | 5 % | 97.0 % of positions |" in card.text
    merged = render_export_card({**manifest, "format": "safetensors", "tensor_type": "f32"}, "ja-dpo")
    assert (merged.data.base_model_relation, merged.data.library_name) == ("merge", "transformers")
    assert f'AutoModelForCausalLM.from_pretrained("{EXPORT_PLACEHOLDER}")' in merged.text
    local = render_export_card({**manifest, "base_model": "builtin:tiny"}, "tiny")
    assert not {"base_model", "base_model_relation"} & set(local.data.to_dict())  # the Hub takes only model ids


def test_the_card_gives_the_whole_runs_training_figures_and_says_it_was_resumed() -> None:
    recipe = load_recipe("tiny-ja")
    once = {"steps": 16, "loss": 0.691721, "runtime_s": 9.4}
    card = str(render_model_card(recipe, {"train": once}, recipe_name="tiny-ja", command="c", plots=[]))
    assert "\n16 steps, mean training loss 0.6917, 9 s of training.\n" in card
    resumed = {**once, "runtime_s": 12.6, "runtime_parts_s": [3.1, 9.5], "resumed_at_steps": [4]}
    card = str(render_model_card(recipe, {"train": resumed}, recipe_name="tiny-ja", command="c", plots=[]))
    assert (
        "\n16 steps, mean training loss 0.6917 over the whole run, 13 s of training in 2 parts (resumed at step 4).\n"
    ) in card
