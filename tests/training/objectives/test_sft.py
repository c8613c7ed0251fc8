"""training.objective: sft (dpo_recipe.training.objectives.sft): completions trained by TRL's SFTTrainer, the
held-out NLL / perplexity base -> tuned, and SFT then DPO from its adapter."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
from conftest import FORM_FIXTURES, tiny_overrides

from dpo_recipe.errors import DataError, RecipeError
from dpo_recipe.train import run

FAST = ("eval.num_generations=0", "training.learning_rate=1e-2")


def test_sft_then_dpo_from_its_adapter(tiny_model: Path, tmp_path: Path) -> None:
    sft = tmp_path / "sft"
    metrics = run("tiny-ja-sft", tiny_overrides(tiny_model, *FAST), output_dir=str(sft))
    train, overall = metrics["train"], metrics["eval"]["overall"]
    assert (train["objective"], train["steps"]) == ("sft", 8)  # 32 chosen answers, 4 a step
    assert train["last_loss"] < train["first_loss"]
    assert overall["rows"] == 8 and overall["tuned_nll"] < overall["base_nll"]  # the completions got likelier
    assert overall["tuned_perplexity"] == pytest.approx(math.exp(overall["tuned_nll"]))
    report = json.loads((sft / "eval_report.json").read_text())
    tokens = sum(r["tokens"] for r in report["per_row"])
    assert overall["base_nll"] == pytest.approx(-sum(r["base_logp"] for r in report["per_row"]) / tokens)
    card = (sft / "README.md").read_text()
    assert "**supervised fine-tuning** (loss on the answers only)" in card and "- sft" in card
    assert f"perplexity {overall['base_perplexity']:.2f} → {overall['tuned_perplexity']:.2f}" in card
    assert "training.beta" not in card.split("## Reproduce")[0]  # SFTConfig's keys only

    from dpo_recipe.evaluation.command import run_eval

    again = run_eval(str(sft), max_pairs=8, out=tmp_path / "again.json")  # the same held-out completions
    assert again["overall"] == pytest.approx(overall, rel=1e-5)

    dpo = run(
        "tiny-ja",
        tiny_overrides(tiny_model, *FAST, "data.max_train_pairs=16", f"model.init_adapter={sft}"),
        output_dir=str(tmp_path / "dpo"),
    )
    assert dpo["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)  # the SFT model is the reference
    card = (tmp_path / "dpo" / "README.md").read_text()
    assert f"> **Started from the adapter `{sft}`**: it was\n> merged into the base weights" in card
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()


def test_sft_refuses_what_it_would_not_read_and_data_with_no_completion(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(importlib.import_module("dpo_recipe.train"), "load_policy", lambda *a: pytest.fail("loaded"))
    with pytest.raises(RecipeError) as err:
        run("tiny-ja-sft", tiny_overrides(tiny_model, "training.beta=0.3", "training.packing=true"))
    assert "training.beta: read by the preference losses only, not by objective sft; remove it" in str(err.value)
    assert "training.packing: the packed path computes DPO's losses; objective sft trains with TRL's SFT" in str(
        err.value
    )
    tokens = 'lora.trainable_tokens=["<|im_start|>", "<|im_end|>"]'  # the tiny model ties its embeddings
    with pytest.raises(RecipeError, match="lora.trainable_tokens: on a model with tied embeddings TRL's SFTTrainer"):
        run("tiny-ja-sft", tiny_overrides(tiny_model, tokens), output_dir=str(tmp_path / "tokens"))
    rows = [json.loads(line) for line in (FORM_FIXTURES / "unpaired.jsonl").read_text().splitlines()]
    undesirable = tmp_path / "bad.jsonl"
    undesirable.write_text("".join(json.dumps({**r, "label": False}, ensure_ascii=False) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad.jsonl: no completion to train on\. training.objective sft trains on"):
        run("tiny-ja-sft", tiny_overrides(tiny_model, f"data.source={undesirable}"), output_dir=str(tmp_path / "x"))


def test_a_stages_recipe_trains_one_folder_a_stage_the_last_card_shows_the_chain_and_resume_keeps_finished_ones(
    tiny_model: Path, tmp_path: Path, capsys
) -> None:
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.train import main

    root = tmp_path / "chain"
    argv = ["--recipe", "tiny-ja-sft-dpo", "--output-dir", str(root)]
    for item in tiny_overrides(tiny_model, *FAST, "data.max_train_pairs=8", "data.max_eval_pairs=4"):
        argv += ["--set", item]
    main(argv)
    first, second = json.loads((root / "stage-1" / "metrics.json").read_text()), root / "stage-2"
    assert first["train"]["objective"] == "sft"
    dpo = json.loads((second / "metrics.json").read_text())
    assert dpo["train"]["objective"] == "dpo" and dpo["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert load_recipe(str(second / "recipe.yaml")).model.init_adapter == str(root / "stage-1")
    chain = dpo["chain"]
    assert [(c["adapter"], c["recipe"], c["objective"], c["steps"]) for c in chain] == [
        (str(root / "stage-1"), "tiny-ja-sft", "sft", first["train"]["steps"]),
        (str(second), "tiny-ja", "dpo", dpo["train"]["steps"]),
    ]
    assert chain[0] == first["chain"][0]  # the start's own record, carried on
    assert chain[1]["held_out"].startswith("held-out reward accuracy") and chain[0]["held_out"].startswith("held-out p")
    card = (second / "README.md").read_text()
    assert "## Training chain" in card and f"| base | `{tiny_model}` |" in card
    assert f"| 1 | `{root / 'stage-1'}` | tiny-ja-sft | sft |" in card and f"| 2 | `{second}` | tiny-ja | dpo |" in card
    assert "## Training chain" not in (root / "stage-1" / "README.md").read_text()  # one stage: no chain to show
    stamp = (second / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    main([*argv, "--resume"])
    kept = capsys.readouterr().out
    assert "--resume: stage 1 of 2 (tiny-ja-sft) finished" in kept and "--resume: stage 2 of 2 (tiny-ja)" in kept
    assert (second / "metrics.json").stat().st_mtime_ns == stamp


def test_then_is_a_chain_and_a_mistake_in_any_stage_stops_it_before_the_first_trains(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    from dpo_recipe.config.stages import Stage
    from dpo_recipe.train import run
    from dpo_recipe.training.run_context import RunContext

    stages, _ = RunContext(recipe="tiny-ja-sft", then=("tiny-ja",), overrides=("data.seed=3",)).stages()
    assert stages == [Stage("tiny-ja-sft", ("data.seed=3",)), Stage("tiny-ja", ("data.seed=3",))]
    assert RunContext(recipe="tiny-ja").stages() is None
    monkeypatch.setattr(importlib.import_module("dpo_recipe.train"), "load_policy", lambda *a: pytest.fail("loaded"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - tiny-ja-sft\n  - {recipe: tiny-ja, set: {training.objective: ppo}}\n")
    with pytest.raises(
        RecipeError, match=r"Stage 2 of 2 \(tiny-ja\): .*training.objective: expected one of dpo, kto, sft, got 'ppo'"
    ):
        run(str(bad), tiny_overrides(tiny_model), output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape", ["messages", "prompt_completion"])
def test_sft_trains_on_conversations_and_on_unlabelled_prompt_completion_rows(
    shape: str, tiny_model: Path, tmp_path: Path
) -> None:
    """SFT's own data forms (``chat``, ``completion``): every row trains but the held-out prompts', and the loss is
    the answers' alone, so the held-out answers get likelier."""
    from conftest import write_jsonl

    rows = []
    for i in range(12):
        question, reply = f"質問{i}：過学習とは何ですか？", f"答え{i}：訓練データに合わせすぎる現象です。"
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        rows.append({"messages": turns} if shape == "messages" else {"prompt": question, "completion": reply})
    source = write_jsonl(tmp_path / "sft.jsonl", rows)
    settings = ("data.test_size=0.25", "data.max_train_pairs=null", "data.max_eval_pairs=null")
    metrics = run(
        "tiny-ja-sft",
        tiny_overrides(tiny_model, *FAST, f"data.source={source}", *settings),
        output_dir=str(tmp_path / "out"),
    )
    assert (metrics["train"]["rows"], metrics["eval"]["overall"]["rows"]) == (9, 3)
    assert metrics["eval"]["overall"]["tuned_nll"] < metrics["eval"]["overall"]["base_nll"]
    assert metrics["data"]["sources"][0]["form"] == ("chat" if shape == "messages" else "completion")
