"""The evaluate metric module (evaluation/metrics/dpo_preference, loaded by load_metric) against hand-computed
values, breakdowns, gather, and `dpo-recipe eval`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from conftest import REPO, invoke, tiny_overrides, two_process_launcher

from dpo_recipe.errors import DpoRecipeError, ModelError
from dpo_recipe.evaluation.command import run_eval
from dpo_recipe.evaluation.report import dpo_lines, markdown_summary
from dpo_recipe.evaluation.scoring import load_metric, summarise
from dpo_recipe.train import run


def pair(pc, pr, rc, rr, nc=1, nr=1, **extra):
    return {
        "policy_chosen_logps": pc,
        "policy_rejected_logps": pr,
        "reference_chosen_logps": rc,
        "reference_rejected_logps": rr,
        "chosen_tokens": nc,
        "rejected_tokens": nr,
        **extra,
    }


def test_metric_against_hand_computed_values() -> None:
    rows = [
        pair(-10.0, -12.0, -11.0, -11.0, 5, 5),  # chosen reward +0.1, rejected -0.1: win, margin 0.2
        pair(-8.0, -9.0, -8.0, -9.0, 4, 4),  # rewards both 0: a tie, counted wrong
        pair(-20.0, -12.0, -19.0, -12.0, 10, 4),  # sums prefer rejected, per token chosen (-2 > -3)
    ]
    result = load_metric().compute(**{k: [r[k] for r in rows] for k in rows[0]}, beta=0.1)
    assert result["pairs"] == 3 and result["reward_ties"] == 1
    assert result["reward_accuracy"] == pytest.approx(1 / 3)
    assert result["chosen_reward"] == pytest.approx((0.1 + 0.0 - 0.1) / 3)
    assert result["rejected_reward"] == pytest.approx((-0.1 + 0.0 + 0.0) / 3)
    assert result["reward_margin"] == pytest.approx((0.2 + 0.0 - 0.1) / 3)
    expected_loss = (math.log1p(math.exp(-0.2)) + math.log(2) + math.log1p(math.exp(0.1))) / 3
    assert result["loss"] == pytest.approx(expected_loss)
    assert result["policy_loglik_accuracy"] == pytest.approx(2 / 3)  # -10>-12, -8>-9, -20<-12
    assert result["policy_loglik_accuracy_normalized"] == pytest.approx(1.0)  # -2>-2.4, -2>-2.25, -2>-3
    assert result["base_loglik_accuracy"] == pytest.approx(1 / 3)  # tie, win, loss
    assert result["base_loglik_accuracy_normalized"] == pytest.approx(2 / 3)  # -19/10 > -12/4
    low, high = result["reward_accuracy_ci95"]
    assert (low, high) == pytest.approx((0.0615, 0.7923), abs=1e-4)


def test_wilson_interval_known_value() -> None:
    rows = [pair(-1.0, -2.0, -1.0, -1.0)] * 8 + [pair(-2.0, -1.0, -1.0, -1.0)] * 2
    result = load_metric().compute(**{k: [r[k] for r in rows] for k in rows[0]})
    assert result["reward_accuracy"] == 0.8
    assert result["reward_accuracy_ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)


def test_breakdowns_by_rejection_type_and_domain() -> None:
    scored = [
        pair(-1.0, -2.0, -1.0, -1.0, rejection_type="factual_error", domain="ai"),
        pair(-2.0, -1.0, -1.0, -1.0, rejection_type="factual_error", domain="programming"),
        pair(-1.0, -3.0, -1.0, -1.0, rejection_type="too_terse", domain="ai"),
    ]
    report = summarise(scored, beta=0.5)
    assert report["by_rejection_type"]["factual_error"]["reward_accuracy"] == 0.5
    assert report["by_rejection_type"]["too_terse"]["reward_margin"] == pytest.approx(1.0)
    assert report["by_domain"]["ai"]["pairs"] == 2 and report["by_domain"]["ai"]["reward_accuracy"] == 1.0
    assert report["overall"]["reward_accuracy"] == pytest.approx(2 / 3)
    assert [s["reward_margin"] for s in scored] == pytest.approx([0.5, -0.5, 1.0])
    table = markdown_summary(report, dpo_lines(report))
    assert "| factual_error | 2 | 50.0% (" in table and "| too_terse | 1 | 100.0% (" in table


def test_a_reference_free_objective_is_scored_by_its_own_reward_and_the_report_says_which() -> None:
    # DPO's reward ranks pair 0 wrong (chosen fell 1 from the reference, rejected did not move); SimPO's
    # beta x mean log-prob ranks it right (-10 / 5 = -2 > -12 / 4 = -3), and pair 1 wrong (-4 < -2)
    scored = [pair(-10.0, -12.0, -9.0, -12.0, 5, 4), pair(-8.0, -4.0, -8.0, -5.0, 2, 2)]
    dpo = summarise([dict(s) for s in scored], beta=0.5)
    assert dpo["reward"].startswith("dpo:") and dpo["overall"]["reward_accuracy"] == 0.0
    report = summarise(scored, beta=0.5, loss_type=["simpo"])
    assert report["reward"] == "simpo: beta x mean log-prob"
    assert report["overall"]["reward_accuracy"] == 0.5
    assert report["overall"]["chosen_reward"] == pytest.approx(0.5 * (-2 - 4) / 2)
    assert [s["reward_margin"] for s in scored] == pytest.approx([0.5, -1.0])
    assert report["overall"]["base_loglik_accuracy"] == 0.5  # the base's log-likelihood needs no reward
    assert "Implicit reward: simpo: beta x mean log-prob" in markdown_summary(report, dpo_lines(report))
    assert "Implicit reward" not in markdown_summary(dpo, dpo_lines(dpo))
    assert summarise([dict(s) for s in scored], beta=0.5, loss_type="orpo")["reward"].startswith("orpo:")


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval-run") / "adapter"
    run("tiny-ja", tiny_overrides(tiny_model, "training.num_epochs=3"), output_dir=str(out))
    return out


def test_training_report_holds_breakdowns_and_generations(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    held_out = metrics["eval"]
    assert held_out["overall"]["pairs"] == 16
    assert set(held_out["by_rejection_type"]) <= {
        "factual_error",
        "concept_swap",
        "off_topic",
        "too_terse",
        "impolite",
        "english",
        "refusal",
        "repetitive",
    }
    assert sum(g["pairs"] for g in held_out["by_domain"].values()) == 16
    assert len(held_out["generations"]) == 2 and all("tuned" in g for g in held_out["generations"])
    for chart in ("accuracy_by_rejection_type", "reward_margin_histogram"):
        assert (trained / "plots" / f"{chart}.png").read_bytes().startswith(b"\x89PNG")
    report = json.loads((trained / "eval_report.json").read_text())
    assert len(report["per_pair"]) == 16
    assert "| rejection_type | pairs | reward acc." in (trained / "README.md").read_text()


def test_trained_model_beats_its_base_on_training_pairs(trained: Path, tiny_model: Path, tmp_path: Path) -> None:
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.data.sources import load_preference_splits

    train_rows, _, _ = load_preference_splits(load_recipe("tiny-ja").data)  # the 64 pairs tiny-ja trained on
    assert len(train_rows) == 64
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_rows), encoding="utf-8")
    report = run_eval(str(trained), data=str(data), split="train", out=tmp_path / "r.json")
    overall = report["overall"]
    # Summed log-likelihood is dominated by answer length; per token the tuned model now prefers chosen more.
    assert overall["policy_loglik_accuracy_normalized"] > overall["base_loglik_accuracy_normalized"]
    assert overall["reward_accuracy"] > 0.8 and overall["reward_margin"] > 0
    assert (tmp_path / "r_plots" / "accuracy_by_rejection_type.png").exists()


def test_two_processes_give_the_same_report_as_one(trained: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["-m", "dpo_recipe.evaluation", "--adapter", str(trained)]
    one = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = two_process_launcher()
    two = subprocess.run(
        [*launcher, *args, "--out", str(tmp_path / "two.json")], env=env, capture_output=True, text=True, timeout=300
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert len(a["per_pair"]) == len(b["per_pair"]) == 21  # the whole held-out split of tiny-ja's 200 pairs
    for key in ("reward_accuracy", "reward_ties", "base_loglik_accuracy", "policy_loglik_accuracy"):
        assert a["overall"][key] == b["overall"][key]
    assert a["overall"]["reward_margin"] == pytest.approx(b["overall"]["reward_margin"], abs=1e-5)
    assert [p["topic"] for p in a["per_pair"]] == [p["topic"] for p in b["per_pair"]]


def test_eval_logps_match_trl(tiny_model: Path, tmp_path: Path) -> None:
    """Our scoring path (completion positions only) gives TRL's log-probs on the same pairs."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import DPOTrainer

    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.data.sources import load_preference_splits
    from dpo_recipe.evaluation.scoring import score_pairs
    from dpo_recipe.models.loading import load_model, load_tokenizer
    from dpo_recipe.training.objectives.dpo import DPO

    recipe = load_recipe("tiny-ja", tiny_overrides(tiny_model, "eval.batch_size=8"))
    _, rows, _ = load_preference_splits(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    pairs = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[:16]])
    trainer = DPOTrainer(
        model=load_model(recipe.model),
        args=DPO().trainer_args(recipe, tmp_path),
        train_dataset=pairs,
        eval_dataset=pairs,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
    )
    trl_metrics = trainer.evaluate()
    torch.manual_seed(0)
    model = get_peft_model(load_model(recipe.model), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    scored = score_pairs(model, tokenizer, rows[:16], recipe.training.max_length, 8, progress=False)
    ours_chosen = sum(s["policy_chosen_logps"] for s in scored) / 16
    ours_rejected = sum(s["policy_rejected_logps"] for s in scored) / 16
    assert ours_chosen == pytest.approx(trl_metrics["eval_logps/chosen"], rel=1e-4)
    assert ours_rejected == pytest.approx(trl_metrics["eval_logps/rejected"], rel=1e-4)


def test_eval_bad_inputs_fail_before_weights_load(runner, trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"frage": "q", "chosen": "a", "rejected": "b"}) + "\n", encoding="utf-8")
    result = invoke(runner, "eval", "--adapter", trained, "--data", bad, "--out", tmp_path / "x.json")
    assert result.exit_code == 2 and "no-shared-prompt in split 'train' rows 1: chosen / rejected share no" in (
        result.output
    )
    with pytest.raises(DpoRecipeError, match=r"columns: frage, chosen, rejected\), name it with data.prompt_column"):
        run_eval(str(trained), data=str(bad), out=tmp_path / "x.json")
    from dpo_recipe.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", hidden_size=32)
    with pytest.raises(ModelError, match="does not fit base model .*q_proj has size 32, the adapter expects 64"):
        run_eval(str(trained), base=str(other), out=tmp_path / "y.json")
    empty = tmp_path / "empty"
    rows = [{"prompt": "質問です", "chosen": "良い回答です。", "rejected": "悪い。"}]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_dict({k: [] for k in rows[0]})}
    ).save_to_disk(str(empty))
    with pytest.raises(DpoRecipeError, match="empty-split in split 'test'"):
        run_eval(str(trained), data=str(empty), out=tmp_path / "z.json")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "z.json").exists()


def test_held_out_answers_carry_their_checks_and_summary(trained: Path) -> None:
    from dpo_recipe.evaluation.answer_checks import check_answer, summarise_checks
    from dpo_recipe.evaluation.report import answer_checks_table

    held_out = json.loads((trained / "metrics.json").read_text())["eval"]
    answers = held_out["generations"]
    assert len({a["topic"] for a in answers}) == len(answers) == 2  # one prompt per held-out topic
    for answer in answers:
        for side in ("base", "tuned"):
            assert answer[f"{side}_checks"] == check_answer(answer[side], answer["topic"])
    checks = held_out["answer_checks"]
    assert checks["decoding"] == {
        "greedy": True,
        "max_new_tokens": 8,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    for side in ("base", "tuned"):
        assert checks[side] == summarise_checks([a[f"{side}_checks"] for a in answers])
    table = "\n".join(answer_checks_table(checks))
    assert "repetition_penalty 1.0, no_repeat_ngram_size 0" in table
    assert f"| tuned | {100 * checks['tuned']['japanese_share']:.1f}% |" in table


def test_questions_across_topics_takes_each_topics_first_question_then_the_next() -> None:
    from dpo_recipe.evaluation.scoring import questions_across_topics

    pairs = [("a1", "A"), ("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("c1", "C"), ("c2", "C")]
    rows = [{"prompt": p, "topic": t} for p, t in pairs]  # a1 twice: two pairs of one question
    assert [r["prompt"] for r in questions_across_topics(rows, 2)] == ["a1", "b1"]
    assert [r["prompt"] for r in questions_across_topics(rows, 3)] == ["a1", "b1", "c1"]  # one a topic first
    assert [r["prompt"] for r in questions_across_topics(rows, 5)] == ["a1", "b1", "c1", "a2", "c2"]
    assert [r["prompt"] for r in questions_across_topics(rows, 99)] == ["a1", "b1", "c1", "a2", "c2", "a3"]
    untopical = [{"prompt": "x"}, {"prompt": "x"}, {"prompt": "y"}]
    assert [r["prompt"] for r in questions_across_topics(untopical, 5)] == ["x", "y"]
