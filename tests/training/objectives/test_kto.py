"""training.objective: kto (dpo_recipe.training.objectives.kto): unpaired rows, or pairs split into them,
trained by TRL's KTOTrainer behind the recipe: artifacts, card, held-out report, and the same numbers as
KTOTrainer run directly."""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path

import pytest
from conftest import FORM_FIXTURES, tiny_overrides, write_jsonl

from dpo_recipe.errors import DataError, RecipeError
from dpo_recipe.train import run

FAST = ("eval.num_generations=0",)
KTO_ON_TINY_JA = ("training.objective=kto",)  # what the DPO refusal tells a user to set: packing is DPO's


def test_kto_recipe_on_the_tiny_model_writes_adapter_card_and_held_out_report(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "kto"
    metrics = run("tiny-ja-kto", tiny_overrides(tiny_model, "training.desirable_weight=1.5"), output_dir=str(out))
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "recipe.yaml", "eval_report.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not (out / "INCOMPLETE").exists()
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert (train["objective"], train["pairs"], train["rows"], train["steps"]) == ("kto", 32, 64, 16)
    assert train["desirable_rows"] == train["undesirable_rows"] == 32 and train["split_from_pairs"] is True
    assert 0.5 <= train["first_loss"] <= 0.75  # LoRA B = 0: every reward is 0, each row's loss 0.5 x its weight
    assert "kl" in train and "rewards/chosen" in train
    report = json.loads((out / "eval_report.json").read_text())
    overall = report["overall"]
    assert report["objective"] == "kto" and overall["rows"] == 16 and len(report["per_row"]) == 16
    assert overall["desirable_rows"] == overall["undesirable_rows"] == 8
    for key in ("reward_accuracy", "desirable_accuracy", "undesirable_accuracy", "loss", "kl", "reward_margin"):
        assert isinstance(overall[key], float), key
    right = [r["kl_adjusted_reward"] > 0 if r["label"] else r["kl_adjusted_reward"] < 0 for r in report["per_row"]]
    assert overall["reward_accuracy"] == pytest.approx(sum(right) / 16)
    assert report["answer_checks"]["tuned"]["answers"] == 2  # the DPO path's answer checks
    assert metrics["eval"]["overall"] == overall and "per_row" not in metrics["eval"]
    card = (out / "README.md").read_text()
    assert "aligned with\n**KTO** (Kahneman-Tversky Optimization" in card and "- kto" in card
    assert "desirable_weight 1.5, undesirable_weight 1.0 (32 desirable and 32 undesirable training rows)" in card
    assert "The training data were pairs, split automatically into unpaired rows" in card
    assert f"Held-out KL-adjusted reward accuracy **{100 * overall['reward_accuracy']:.1f}%** on 16 rows" in card
    assert "| training.desirable_weight | desirable_weight | 1.5 |" in card
    assert "| training.objective | loss_type | kto |" in card and "loss_weights" not in card.split("## Reproduce")[0]

    from dpo_recipe.evaluation.command import run_eval

    again = run_eval(str(out), max_pairs=8, out=tmp_path / "again.json")  # `dpo-recipe eval`, the 8 pairs held out
    assert again["objective"] == "kto" and again["overall"] == pytest.approx(overall, rel=1e-5)
    assert [r["row"] for r in again["per_row"]] == [r["row"] for r in report["per_row"]]
    assert json.loads((tmp_path / "again.json").read_text())["overall"] == again["overall"]


def _unpaired_dataset(directory: Path) -> tuple[Path, list[dict], list[dict]]:
    """Unpaired rows of the builtin pairs, saved with a train and a test split (rows in file order)."""
    import datasets

    from dpo_recipe.data.forms import unpaired_rows
    from dpo_recipe.data.generator import generate_pairs

    splits = generate_pairs(num_pairs=60, seed=3)
    keep = ("prompt", "completion", "label")
    train = [{k: r[k] for k in keep} for r in unpaired_rows(splits["train"][:16])]
    test = [{k: r[k] for k in keep} for r in unpaired_rows(splits["test"][:6])]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    ).save_to_disk(str(directory))
    return directory, train, test


def test_loss_rewards_and_held_out_numbers_match_ktotrainer_run_directly(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    source, train_rows, test_rows = _unpaired_dataset(tmp_path / "rows")
    out = tmp_path / "recipe"
    settings = (f"data.source={source}", "data.max_eval_pairs=null", "training.learning_rate=5e-3")
    settings += ("training.undesirable_weight=1.3", *FAST)
    run("tiny-ja-kto", tiny_overrides(tiny_model, *settings), output_dir=str(out))
    recipe_log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    report = json.loads((out / "eval_report.json").read_text())

    # plain TRL: the same rows, shuffled once with the seed as objectives.kto does, the same LoRA, settings
    for rows in (train_rows, test_rows):
        random.Random(42).shuffle(rows)
    args = KTOConfig(
        output_dir=str(tmp_path / "plain"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        num_train_epochs=1,
        beta=0.1,
        undesirable_weight=1.3,
        max_length=128,
        seed=42,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        activation_checkpointing=False,
        bf16=False,
        use_cpu=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    plain_log = [h for h in trainer.state.log_history if "loss" in h]
    recipe_steps = [h for h in recipe_log if "loss" in h]
    assert len(plain_log) == len(recipe_steps) == 8
    for mine, theirs in zip(recipe_steps, plain_log, strict=True):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert (key in mine) == (key in theirs), key
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (mine["step"], key)
    assert recipe_steps[-1]["loss"] != pytest.approx(0.5, abs=1e-4)  # the adapter moved

    evaluated = trainer.evaluate(Dataset.from_list(test_rows))
    overall = report["overall"]
    assert overall["rows"] == 12
    assert overall["loss"] == pytest.approx(evaluated["eval_loss"], rel=1e-4, abs=1e-6)
    assert overall["kl"] == pytest.approx(evaluated["eval_kl"], rel=1e-4, abs=1e-6)
    batches: dict[int, list[dict]] = {}
    for row in report["per_row"]:
        batches.setdefault(row["batch"], []).append(row)
    for label, key in ((True, "eval_rewards/chosen"), (False, "eval_rewards/rejected")):
        means = [
            sum(r["reward"] for r in b if r["label"] is label) / n
            for b in batches.values()
            if (n := sum(r["label"] is label for r in b))
        ]
        assert sum(means) / len(means) == pytest.approx(evaluated[key], rel=1e-4, abs=1e-6), key


def test_pairs_are_split_into_unpaired_rows_and_train(tiny_model: Path, tmp_path: Path, capsys) -> None:
    pairs = FORM_FIXTURES / "stack_exchange.standard.jsonl"
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    more = [{**row, "prompt": row["prompt"] + "（詳しく）"} for row in rows]
    source = write_jsonl(tmp_path / "pairs.jsonl", rows + more)  # 12 pairs: 24 rows
    settings = (f"data.source={source}", "data.test_size=0.25", *FAST)
    run("tiny-ja-kto", tiny_overrides(tiny_model, *settings), output_dir=str(tmp_path / "dry"), dry_run=True)
    dry = capsys.readouterr().out
    assert "objective kto: 9 training pairs split into 18 unpaired rows and 3 held-out pairs into 6" in dry
    assert "rows kept: 18 (9 desirable, 9 undesirable); held-out rows: 6" in dry
    metrics = run("tiny-ja-kto", tiny_overrides(tiny_model, *settings), output_dir=str(tmp_path / "run"))
    assert (metrics["train"]["pairs"], metrics["train"]["rows"], metrics["train"]["split_from_pairs"]) == (9, 18, True)
    assert metrics["eval"]["overall"]["rows"] == 6
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_bad_kto_settings_are_refused_together_before_weights_load(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(
        importlib.import_module("dpo_recipe.train"), "load_policy", lambda *a: pytest.fail("weights loaded")
    )
    with pytest.raises(RecipeError, match=r"training.desirable_weight: must be > 0.0, got -1"):
        run("tiny-ja-kto", tiny_overrides(tiny_model, "training.desirable_weight=-1"), output_dir=str(tmp_path / "a"))
    packed_only = (
        "training.objective=kto",
        "lora.token_learning_rate=1e-3",
        "training.loss_type=ipo",
        "training.per_device_batch_size=1",
    )
    with pytest.raises(RecipeError) as err:
        run("tiny-ja", tiny_overrides(tiny_model, *packed_only), output_dir=str(tmp_path / "b"))
    message = str(err.value)
    assert "training.loss_type: 'ipo' names DPO pair losses; training.objective kto trains KTO's own loss" in message
    assert "training.packing" not in message  # a DPO recipe's packing default does not apply to kto
    assert "lora.token_learning_rate: a learning rate of the packed path's optimizer" in message
    assert "training.per_device_batch_size: KTO estimates its KL term from the other rows of a batch" in message
    assert "\n" not in message and not (tmp_path / "b").exists()
    tokens = 'lora.trainable_tokens=["<|im_start|>", "<|im_end|>"]'  # the tiny model ties its embeddings
    with pytest.raises(RecipeError, match="lora.trainable_tokens: on a model with tied embeddings TRL's KTOTrainer"):
        run("tiny-ja-kto", tiny_overrides(tiny_model, tokens), output_dir=str(tmp_path / "c"))


def test_unpaired_data_refused_by_dpo_trains_with_the_objective_the_refusal_names(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    source = FORM_FIXTURES / "unpaired.jsonl"
    with monkeypatch.context() as patched:
        patched.setattr(
            importlib.import_module("dpo_recipe.train"), "load_policy", lambda *a: pytest.fail("weights loaded")
        )
        with pytest.raises(DataError) as err:
            run("tiny-ja", tiny_overrides(tiny_model, f"data.source={source}"), output_dir=str(tmp_path / "dpo"))
    message = str(err.value)
    assert "Train it with training.objective: kto (TRL's KTOTrainer; e.g. --set training.objective=kto, or the" in (
        message
    )
    settings = (f"data.source={source}", *KTO_ON_TINY_JA, "data.test_size=0.3", *FAST)
    metrics = run("tiny-ja", tiny_overrides(tiny_model, *settings), output_dir=str(tmp_path / "kto"))
    train = metrics["train"]
    assert (train["pairs"], train["split_from_pairs"]) == (None, False)  # unpaired rows, trained as they are
    assert train["rows"] + metrics["eval"]["overall"]["rows"] == 7


def test_unpaired_rows_sorted_by_label_are_cut_after_the_shuffle_and_one_label_is_refused(
    runner, tiny_model: Path, tmp_path: Path, capsys
) -> None:
    from conftest import invoke

    pairs = [{"prompt": f"質問{i}", "chosen": f"丁寧な答え{i}です。", "rejected": f"違う{i}。"} for i in range(40)]
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    unpaired = tmp_path / "unpaired.jsonl"  # data convert writes every desirable row, then every undesirable one
    assert invoke(runner, "data", "convert", source, "--out", unpaired, "--to", "unpaired").exit_code == 0
    settings = (f"data.source={unpaired}", "data.max_train_pairs=32", "data.max_eval_pairs=8", *FAST)
    run("tiny-ja-kto", tiny_overrides(tiny_model, *settings), output_dir=str(tmp_path / "dry"), dry_run=True)
    dry = capsys.readouterr().out
    kept = next(line for line in dry.splitlines() if line.startswith("rows kept: 32 ("))
    desirable = int(kept.split("(")[1].split(" ")[0])
    assert 8 <= desirable <= 24, kept  # both labels train, as a shuffled file would give them
    assert "data.max_train_pairs 32: 32 of 72 training rows, chosen after a shuffle seeded by data.seed 0" in dry

    good_only = write_jsonl(
        tmp_path / "good.jsonl", [{"prompt": p["prompt"], "completion": p["chosen"], "label": True} for p in pairs]
    )
    linted = invoke(runner, "data", "lint", good_only)
    assert linted.exit_code == 0 and (
        "warning | one-label | train | - | every row is labelled true; KTO learns from desirable and undesirable "
        "answers together, so training refuses a training split of one label" in linted.output
    )
    with pytest.raises(DataError) as err:
        run("tiny-ja-kto", tiny_overrides(tiny_model, f"data.source={good_only}"), output_dir=str(tmp_path / "one"))
    assert str(err.value).startswith(f"{good_only}: all ")
    assert "training rows are labelled true (desirable); KTO learns from both desirable and undesirable" in str(
        err.value
    )
