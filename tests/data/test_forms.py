"""Preference data as it is published → the standard form: each form on a hand-written Japanese fixture
(tests/fixtures/forms/NAME.jsonl, and the same pairs written by hand in the standard form in
NAME.standard.jsonl), the ranked pairing rules, and every bad input as a finding naming its row and field."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import FORM_FIXTURES, PUBLISHED_FORMS, invoke, tiny_overrides, write_jsonl

from dpo_recipe.config.loader import data_section
from dpo_recipe.config.schema import DataSection
from dpo_recipe.data.forms import map_columns, ranked_pairs, to_standard
from dpo_recipe.data.sources import read_file, read_source, standard_splits
from dpo_recipe.errors import DataError
from dpo_recipe.training.run_context import RunContext

USER = {"role": "user", "content": "過学習とは何ですか？"}


def answer(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def convert(rows: list[dict], **keys) -> tuple[list[dict], dict, list[str]]:
    """Rows of one split → (converted rows, {(check, rows): message} of the findings, notes)."""
    conversion = to_standard({"train": rows}, DataSection(source="pairs.jsonl", **keys))
    found = {(f.check, tuple(f.rows)): f.message for f in conversion.findings}
    return conversion.splits.get("train", []), found, conversion.notes


def training_context(source: Path, out: Path, tiny_model: Path, settings: tuple[str, ...]) -> RunContext:
    """Six pairs: four train in two steps of two, two are held out."""
    overrides = tiny_overrides(
        tiny_model,
        f"data.source={source}",
        *settings,
        "data.test_size=0.34",
        "data.max_train_pairs=null",
        "data.max_eval_pairs=null",
        "training.per_device_batch_size=2",
        "training.max_length=256",
        "eval.num_generations=0",
    )
    return RunContext(recipe="tiny-ja", from_hub=None, overrides=tuple(overrides), output_dir=str(out))


@pytest.mark.parametrize("name", PUBLISHED_FORMS)
def test_a_published_form_trains_on_the_token_ids_of_its_standard_form(
    name: str, tiny_model: Path, tmp_path: Path, capsys
) -> None:
    from dpo_recipe.train import evaluate_and_save, setup, train

    settings, note = PUBLISHED_FORMS[name]
    source, standard = FORM_FIXTURES / f"{name}.jsonl", FORM_FIXTURES / f"{name}.standard.jsonl"
    section = data_section({"source": str(source)}, settings)
    converted, report = standard_splits(read_source(str(source)), section)
    assert converted == {"train": read_file(standard)} and not report.findings
    assert any(line.startswith(note) for line in report.notes), report.notes

    published = setup(training_context(source, tmp_path / "published", tiny_model, settings))
    by_hand = setup(training_context(standard, tmp_path / "by-hand", tiny_model, ()))
    assert note in capsys.readouterr().out  # training says which form it read
    seen, expected = published.trainer.train_dataset, by_hand.trainer.train_dataset
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert seen[column] == expected[column] and len(seen[column]) == 4
    train(published)
    metrics = evaluate_and_save(published, 0.0)
    assert (metrics["train"]["pairs"], metrics["train"]["steps"], metrics["eval"]["overall"]["pairs"]) == (4, 2, 2)
    assert metrics["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert math.isfinite(metrics["train"]["last_loss"])


def test_the_dry_run_prints_a_multi_turn_pair_as_the_chat_template_renders_it(tiny_model: Path, capsys) -> None:
    from dpo_recipe.train import setup

    context = training_context(FORM_FIXTURES / "implicit_messages.jsonl", Path("unused"), tiny_model, ())
    assert setup(dataclasses.replace(context, dry_run=True)) is None
    report = capsys.readouterr().out
    assert "form: implicit, messages (detected)" in report
    assert "rendered prompt not a prefix of prompt + answer 0" in report
    first_train_row = read_file(FORM_FIXTURES / "implicit_messages.standard.jsonl")[0]  # held out: rows 3 and 5
    assert [m["role"] for m in first_train_row["prompt"]] == ["system", "user", "assistant", "user"]
    turns = "".join(f"<|im_start|>{m['role']}\\n{m['content']}<|im_end|>\\n" for m in first_train_row["prompt"])
    assert f"  prompt: '{turns}<|im_start|>assistant\\n'" in report
    assert "  chosen: '未知のデータでの性能を安定して見積もるためです。<|im_end|>\\n'" in report
    assert "  rejected: '学習を速くするためです。<|im_end|>\\n'" in report


def test_implicit_text_splits_where_trl_splits() -> None:
    from trl.data_utils import maybe_extract_prompt

    rows = [
        {"chosen": "Q: What is DPO? A: A preference loss.", "rejected": "Q: What is DPO? A: No idea."},
        {"chosen": "データとは記録です。", "rejected": "データとは何か。"},
    ]
    converted, found, notes = convert(rows)
    assert converted == [maybe_extract_prompt(row) for row in rows]
    assert converted[0]["prompt"] == "Q: What is DPO? A:" and converted[0]["chosen"] == " A preference loss."
    assert not found and notes == [
        "form: implicit, text (detected): chosen and rejected hold the prompt: their longest shared start, or for "
        "messages every turn before the last assistant turn"
    ]


def test_hh_with_the_transcript_up_to_the_answer_in_a_prompt_column() -> None:
    rows = [
        {
            "prompt": "\n\nHuman: 過学習とは何ですか？\n\nAssistant:",
            "chosen": " 合わせすぎです。",
            "rejected": " 不明。",
        }
    ]
    converted, found, _ = convert(rows)
    assert converted == [{"prompt": [USER], "chosen": [answer("合わせすぎです。")], "rejected": [answer("不明。")]}]
    assert not found
    assert convert([{"chosen": "\n\nHuman: a\n\nAssistant: b"}], form="hh")[1] == {
        ("not-a-string", (1,)): "rejected must be HH-RLHF text ('\\n\\nHuman: …\\n\\nAssistant: …')"
    }


def test_bad_rows_are_findings_naming_row_and_field() -> None:
    good = {"chosen": [USER, answer("合わせすぎです。")], "rejected": [USER, answer("不明。")]}
    rows = [
        good,
        {
            "chosen": "\n\nHuman: 過学習とは？\n\nAssistant: 合わせすぎです。",
            "rejected": "\n\nHuman: 過学習とは？\n\nAssistant: 不明。",
        },
        {"chosen": [USER], "rejected": [USER, answer("不明。")]},
        {"chosen": [answer("合わせすぎです。")], "rejected": [answer("不明。")]},
        {"chosen": [{**USER, "role": "human"}, answer("a")], "rejected": [USER, answer("b")]},
        {"chosen": [USER, answer("a")], "rejected": [{"role": "user"}, answer("b")]},
        {"chosen": [USER, answer("a"), USER, answer("b")], "rejected": [{**USER, "content": "別の質問"}, answer("c")]},
        {"chosen": [USER, answer("a")], "rejected": "不明。"},
        good,
    ]
    converted, found, _ = convert(rows)
    assert found == {
        ("mixed-forms", (2,)): "these rows are hh (text), but the data's first row is implicit (messages); one "
        "dataset holds one form: convert these rows or move them to another file",
        ("no-assistant-turn", (3,)): "chosen has no assistant turn, so there is no answer to train on",
        ("no-shared-prompt", (4,)): "chosen / rejected open with the answer: there is no turn before it to be the "
        "prompt",
        ("unknown-role", (5,)): "chosen has a message with role 'human'; roles are system, user, assistant; map "
        "other names with data.roles, e.g. {human: user}",
        ("message-without-content", (6,)): "rejected has a message without text content (role user)",
        ("differs-before-answer", (7,)): "chosen / rejected differ before the last assistant turn; only the last "
        "answer may differ (the turns before it are the prompt)",
        ("mixed-forms", (8,)): "chosen / rejected are messages and text; give both in one form",
    }
    assert len(converted) == 2  # rows 1 and 9
    text_rows = [{"chosen": "猫です。", "rejected": "犬です。"}, {"chosen": "", "rejected": "犬です。"}]
    assert convert(text_rows)[1] == {
        ("no-shared-prompt", (1,)): "chosen / rejected share no prefix to take as the prompt; if a column holds "
        "the prompt (columns: chosen, rejected), name it with data.prompt_column",
        ("empty-field", (2,)): "chosen is empty; fill it in or drop these rows",
    }
    standard = [
        {"prompt": [USER], "chosen": [answer("a")], "rejected": [USER]},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]
    assert convert(standard)[1] == {
        ("answer-not-assistant", (1,)): "rejected holds a turn that is not the assistant's (a user or system turn "
        "inside an answer would be trained as the answer); an answer is the assistant's text, message or messages",
        ("mixed-forms", (2,)): "these rows are standard (text), but the data's first row is standard (messages); "
        "one dataset holds one form: convert these rows or move them to another file",
    }


def test_bad_data_fails_lint_and_training_before_weights_load(runner, tiny_model: Path, tmp_path: Path, monkeypatch):
    from dpo_recipe.train import run

    rows = [
        {"chosen": [USER, answer("合わせすぎです。")], "rejected": [USER, answer("不明。")]},
        {"chosen": [USER, {"role": "assistant"}], "rejected": [USER, answer("不明。")]},
    ]
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = invoke(runner, "data", "lint", source)
    assert result.exit_code == 1
    assert "error | message-without-content | train | 2 | chosen has a message without text content (role " in (
        result.output
    )
    out = tmp_path / "converted.jsonl"
    assert invoke(runner, "data", "convert", source, "--out", out).exit_code == 1 and not out.exists()

    def weights(*args: object) -> None:
        raise AssertionError("weights loaded before the data was checked")

    monkeypatch.setattr(sys.modules["dpo_recipe.train"], "load_policy", weights)
    with pytest.raises(DataError, match=r"message-without-content in split 'train' rows 2: chosen has"):
        run("tiny-ja", tiny_overrides(tiny_model, f"data.source={source}"), output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_file_no_form_fits_lists_its_columns_and_the_keys_to_set(runner, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "se.jsonl", [{"question": "q", "response_j": "a", "response_k": "b"}])
    result = invoke(runner, "data", "lint", source)
    assert result.exit_code == 1
    assert "error | unknown-form | train | - | no preference form fits the columns found (question, response_j, " in (
        result.output
    )
    for key in ("data.prompt_column", "data.chosen_column", "data.rejected_column", "data.form: ranked"):
        assert key in result.output
    _, found, _ = convert([{"prompt": "q", "chosen": "a", "rejected": "b", "responses": []}])
    assert list(found) == [("ambiguous-form", ())]


def test_mapped_columns_are_renamed_joined_and_missing_ones_named() -> None:
    rows = [{"q": "質問", "ctx": "", "good": "良い。", "bad": "悪い。", "id": 7}]
    data = DataSection(source="d.jsonl", prompt_column="q", chosen_column="good", rejected_column="bad")
    assert map_columns({"train": rows}, data) == (
        {"train": [{"prompt": "質問", "chosen": "良い。", "rejected": "悪い。", "ctx": "", "id": 7}]},
        "columns: prompt <- q, chosen <- good, rejected <- bad",
    )
    joined = DataSection(source="d.jsonl", prompt_column=["q", "ctx", "good"])
    assert map_columns({"train": rows}, joined)[0]["train"][0]["prompt"] == "質問\n\n良い。"  # the empty one skipped
    with pytest.raises(DataError, match="data.chosen_column 'better': no such column in split 'train'"):
        map_columns({"train": rows}, DataSection(source="d.jsonl", prompt_column="q", chosen_column="better"))


def test_ranked_answers_pair_by_the_stated_rule() -> None:
    higher = DataSection(source="r.jsonl")
    assert ranked_pairs([4, 9, 1, 9], higher) == [(1, 2)]  # best (first of the tied 9s) against worst
    assert ranked_pairs([5, 5], higher) == ranked_pairs([5], higher) == ranked_pairs([], higher) == []
    assert ranked_pairs([1, 3, 2], DataSection(source="r.jsonl", ranked_better="lower")) == [(0, 1)]
    margin = DataSection(source="r.jsonl", ranked_pairs="margin", ranked_margin=2)
    assert ranked_pairs([4, 9, 1, 3], margin) == [(1, 0), (1, 3), (1, 2), (0, 2), (3, 2)]  # not 4 against 3
    rows = [
        {
            "prompt": "q1",
            "responses": [{"text": "a", "score": 4}, {"text": "b", "score": 9}, {"text": "c", "score": 1}],
        },
        {"prompt": "q2", "responses": [{"text": "d", "score": 2}, {"text": "e", "score": "2.5"}]},
        {"prompt": "q3", "responses": [{"text": "f", "score": 3}]},
        {"prompt": "q4", "responses": [{"text": "g", "score": None}, {"text": "", "score": 1}]},
    ]
    converted, found, notes = convert(rows, ranked_pairs="margin", ranked_margin=2)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in converted] == [
        ("q1", "b", "a"),
        ("q1", "b", "c"),
        ("q1", "a", "c"),
    ]
    assert found == {("ranked-answer", (4,)): "responses[0] has no numeric 'score' (data.ranked_score_field)"}
    assert notes[-1] == (
        "ranked: 3 prompts, 6 answers -> 3 pairs (every two answers whose scores differ by 2 or more; higher score "
        "is better); prompts without a pair: 2 (one answer, or none far enough apart). Lint rows below count these "
        "pairs."
    )
    chat = [{"prompt": [USER], "responses": [{"text": "a", "score": 2}, {"text": "b", "score": 1}]}]
    assert convert(chat)[0] == [
        {
            "prompt": [USER],
            "chosen": [answer("a")],
            "rejected": [answer("b")],
            "chosen_score": 2.0,
            "rejected_score": 1.0,
        }
    ]


# ---------------------------------------------------------------------------- issue 23: chat forms, unpaired, roles


@pytest.mark.parametrize("name", PUBLISHED_FORMS)
def test_data_convert_writes_the_hand_written_standard_file_byte_for_byte(name: str, runner, tmp_path: Path) -> None:
    settings, note = PUBLISHED_FORMS[name]
    keys = [arg for setting in settings for arg in ("--set", setting)]
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "data", "convert", FORM_FIXTURES / f"{name}.jsonl", "--out", out, *keys)
    assert result.exit_code == 0, result.output
    assert note in result.output and "Wrote 6 pairs of split 'train' in the standard form" in result.output
    assert out.read_bytes() == (FORM_FIXTURES / f"{name}.standard.jsonl").read_bytes()


def sharegpt_row(*turns: dict, chosen: object = "合わせすぎです。", rejected: object = "不明。", **extra) -> dict:
    return {"conversations": list(turns), "chosen": chosen, "rejected": rejected, **extra}


HUMAN = {"from": "human", "value": "過学習とは何ですか？"}


def test_chat_form_rows_that_cannot_be_read_are_findings_naming_row_and_field() -> None:
    rows = [
        sharegpt_row(HUMAN),
        sharegpt_row({"from": "narrator", "value": "ある日。"}, HUMAN),
        sharegpt_row(HUMAN, {"from": "gpt", "value": "合わせすぎです。"}),
        sharegpt_row({"from": "system", "value": "丁寧に。"}),
        sharegpt_row(HUMAN, chosen={"from": "human", "value": "え？"}),
        sharegpt_row(HUMAN, rejected=None),
        sharegpt_row({"from": "system", "value": "丁寧に。"}, HUMAN, system="短く。"),
        sharegpt_row(HUMAN, chosen=[{"from": "gpt"}]),
        sharegpt_row(HUMAN, system=3),
        {"conversations": "過学習とは？", "chosen": "a", "rejected": "b"},
    ]
    converted, found, notes = convert(rows, form="sharegpt")
    assert found == {
        ("unknown-role", (2,)): "conversations has a message with role 'narrator'; roles are system, user, assistant "
        "(also read: developer, gpt, human, model); map other names with data.roles, e.g. {narrator: user}",
        ("prompt-ends-with-answer", (3,)): "conversations ends with an assistant turn; the answers to compare go in "
        "the answer columns, not in the conversation",
        ("no-user-turn", (4,)): "conversations has no user turn, so there is no question to answer",
        ("answer-not-assistant", (5,)): "chosen holds a turn that is not the assistant's (a user or system turn "
        "inside an answer would be trained as the answer); an answer is the assistant's text, message or messages",
        ("not-an-answer", (6,)): "rejected must be the answer: text, one {from, value} / {role, content} message, "
        "or a list",
        ("two-system-prompts", (7,)): "system / prompt both hold a system prompt; keep one (data.system_column: "
        "null ignores the column)",
        ("message-without-content", (8,)): "chosen has a message without text content (role gpt)",
        ("not-a-string", (9,)): "system must be text: the system prompt",
        ("not-messages", (10,)): "conversations must be a non-empty list of {from, value} or {role, content} turns",
    }
    assert converted == [{"prompt": [USER], "chosen": [answer("合わせすぎです。")], "rejected": [answer("不明。")]}]
    assert notes[0].startswith("form: sharegpt (data.form): the conversation column's turns are the prompt")
    assert notes[1].startswith("system: column 'system' becomes the prompt's first message")
    mapped, found, _ = convert([sharegpt_row({"from": "narrator", "value": "質問"})], roles={"narrator": "user"})
    assert not found and mapped[0]["prompt"] == [{"role": "user", "content": "質問"}]


def test_a_conversation_named_by_prompt_column_is_read_as_sharegpt_not_refused() -> None:
    """llm-jp/hh-rlhf-12k-ja with data.prompt_column: conversations was refused as no-shared-prompt."""
    rows = [{"conversations": [HUMAN], "chosen": "合わせすぎです。", "rejected": "不明。"}]
    converted, found, notes = convert(rows, prompt_column="conversations")
    assert not found and notes[:2] == [
        "columns: prompt <- conversations",
        "form: sharegpt (detected): the conversation column's turns are the prompt (roles mapped onto system / user "
        "/ assistant); each answer (text, one message or a list) becomes assistant messages",
    ]
    assert converted == [{"prompt": [USER], "chosen": [answer("合わせすぎです。")], "rejected": [answer("不明。")]}]


TOOLS_TEMPLATE = (  # the tiny model's template, with the tools a prompt may call listed first, as tool-aware ones do
    "{% if tools %}{{ '<|im_start|>system\\n' }}{% for tool in tools %}{{ tool['function']['name'] + '\\n' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_openai_tools_train_where_the_chat_template_renders_them_and_are_refused_where_it_does_not(
    tiny_model: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from dpo_recipe.data.tokens import encode_pair
    from dpo_recipe.train import evaluate_and_save, setup, train

    tool = {"type": "function", "function": {"name": "検索", "parameters": {"type": "object", "properties": {}}}}
    rows = read_file(FORM_FIXTURES / "openai.jsonl")
    rows[1]["input"]["tools"] = [tool]
    converted, found, _ = convert(rows)
    assert not found and converted[1]["tools"] == json.dumps([tool], ensure_ascii=False)
    assert "tools" not in converted[0]  # an empty tools list is not carried
    bad = [{**rows[0], "preferred_output": [{"role": "assistant", "content": None, "tool_calls": []}]}]
    assert convert(bad)[1] == {
        ("message-without-content", (1,)): "preferred_output has a message without text content (role assistant)"
    }
    source = write_jsonl(tmp_path / "tools.jsonl", rows)

    train_module = importlib.import_module("dpo_recipe.train")
    load_policy = train_module.load_policy
    monkeypatch.setattr(train_module, "load_policy", lambda *a: pytest.fail("weights loaded"))
    refused = training_context(source, tmp_path / "refused", tiny_model, ())
    with pytest.raises(DataError, match=r"tools.jsonl: 1 rows carry tool definitions .* does not render tools"):
        setup(refused)
    assert not (tmp_path / "refused").exists()

    monkeypatch.setattr(train_module, "load_policy", load_policy)
    template = tmp_path / "tools.jinja"
    template.write_text(TOOLS_TEMPLATE, encoding="utf-8")
    run = setup(training_context(source, tmp_path / "tools", tiny_model, (f"model.chat_template={template}",)))
    capsys.readouterr()
    dataset = run.trainer.train_dataset
    with_tools = [n for n, row in enumerate(run.train_rows) if row.get("tools")]
    assert len(with_tools) == 1 and len(dataset) == 4
    tokenizer = run.tokenizer
    for n, row in enumerate(run.train_rows):  # TRL's ids (tools given to the template) are encode_pair's
        pair = encode_pair(tokenizer, row)
        assert (dataset["prompt_ids"][n], dataset["chosen_ids"][n]) == (pair.prompt_ids, pair.chosen_ids)
    shown = tokenizer.decode(dataset["prompt_ids"][with_tools[0]])
    assert shown.startswith("<|im_start|>system\n検索\n<|im_end|>\n<|im_start|>user\n"), shown
    train(run)
    metrics = evaluate_and_save(run, 0.0)
    assert metrics["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-3) and metrics["train"]["steps"] == 2


def test_bad_data_config_is_one_paragraph_naming_the_key_before_any_data_is_read(tmp_path: Path) -> None:
    from dpo_recipe.errors import RecipeError

    with pytest.raises(RecipeError) as err:
        data_section({"source": "x.jsonl"}, ["data.roles={human: user, gpt: bot}"])
    assert str(err.value) == (
        "data.roles: 'gpt' is mapped to 'bot'; map each name to one of system, user, assistant. See 'dpo-recipe "
        "recipes keys' for every key and its form."
    )
    with pytest.raises(RecipeError, match=r"data.roles: expected a mapping of names to names, got \['human'\]"):
        data_section({"source": "x.jsonl"}, ["data.roles=[human]"])
    source = FORM_FIXTURES / "orca_system.jsonl"
    with pytest.raises(DataError) as err:
        standard_splits(read_source(str(source)), DataSection(source=str(source), system_column="instruction"))
    assert str(err.value) == (
        f"{source}: data.system_column 'instruction': no such column in split 'train' (found: system, question, "
        "chosen, rejected). Set the key to the column holding the system prompt, or to null for none."
    )
    kept, _ = standard_splits(
        read_source(str(source)), DataSection(source=str(source), prompt_column="question", system_column=None)
    )
    assert kept["train"][0] == {
        "prompt": "機械学習とは何ですか？",
        "chosen": "データから規則を学び、予測や判断に使う手法です。",
        "rejected": "よくわかりません。",
        "system": "あなたは丁寧な機械学習の講師です。",
    }


def test_unpaired_rows_are_a_form_linted_and_converted_and_pairs_unpair_as_trl_does(runner, tmp_path: Path) -> None:
    import datasets
    from trl.data_utils import unpair_preference_dataset

    out = tmp_path / "unpaired.jsonl"
    result = invoke(runner, "data", "convert", FORM_FIXTURES / "unpaired.jsonl", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("form: unpaired, text (detected): prompt / completion / label, one judged answer")
    assert "Wrote 7 unpaired rows of split 'train' in the unpaired form" in result.output
    assert out.read_bytes() == (FORM_FIXTURES / "unpaired.standard.jsonl").read_bytes()
    lint = invoke(runner, "data", "lint", FORM_FIXTURES / "unpaired.jsonl")
    assert "train: 7 unpaired rows; Japanese rows: prompt 100%, completion 100%; desirable (label true) 57%" in (
        lint.output
    )
    pairs = tmp_path / "pairs.jsonl"
    refused = invoke(runner, "data", "convert", FORM_FIXTURES / "unpaired.jsonl", "--out", pairs, "--to", "standard")
    assert refused.exit_code == 2 and "holds unpaired rows (prompt / completion / label); they have no pairs" in (
        refused.output
    )

    pairs = tmp_path / "pairs.jsonl"
    result = invoke(
        runner, "data", "convert", FORM_FIXTURES / "implicit_text.jsonl", "--out", pairs, "--to", "unpaired"
    )
    assert "Wrote 12 unpaired rows of split 'train' in the unpaired form" in result.output
    assert pairs.read_bytes() == (FORM_FIXTURES / "implicit_text.unpaired.jsonl").read_bytes()
    trl_rows = unpair_preference_dataset(
        datasets.Dataset.from_list(read_file(FORM_FIXTURES / "implicit_text.standard.jsonl"))
    )
    assert read_file(pairs) == trl_rows.to_list()
    assert invoke(runner, "data", "lint", pairs).exit_code == 0  # what --to unpaired writes reads back as unpaired

    rows = [
        {"prompt": "q", "completion": "良い答えです。", "label": "true"},
        {"prompt": "q", "completion": "良い答えです。", "label": 0},
        {"prompt": "q", "completion": "別の答えです。", "label": "maybe"},
        {"prompt": "q", "completion": "\u200b", "label": False},
    ]
    source = write_jsonl(tmp_path / "bad-unpaired.jsonl", rows)
    result = invoke(runner, "data", "lint", source)
    assert "error | not-a-label | train | 3 | label must be true (a desirable answer) or false" in result.output
    fixed = write_jsonl(tmp_path / "conflict.jsonl", [rows[0], rows[1], rows[3]])
    result = invoke(runner, "data", "lint", fixed)
    assert "error | empty-after-normalise | train | 3 | completion is empty once invisible" in result.output
    assert "error | label-conflict | train | 2 | the same prompt and completion as an earlier row, with the other" in (
        result.output
    )


def test_unpaired_data_on_the_dpo_path_says_it_needs_kto_before_weights_load(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    from dpo_recipe.train import run

    monkeypatch.setattr(
        importlib.import_module("dpo_recipe.train"), "load_policy", lambda *a: pytest.fail("weights loaded")
    )
    source = FORM_FIXTURES / "unpaired.jsonl"
    with pytest.raises(DataError) as err:
        run("tiny-ja", tiny_overrides(tiny_model, f"data.source={source}"), output_dir=str(tmp_path / "run"))
    message = str(err.value)
    assert message.startswith(f"{source} holds unpaired preference data (prompt / completion / label")
    assert "Train it with training.objective: kto (TRL's KTOTrainer; e.g. --set training.objective=kto" in message
    assert "does not offer" not in message and "\n" not in message
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- the corpus of published shapes

Q1, Q2 = "過学習とは何ですか？", "正則化とは何ですか？"
GOOD1, BAD1 = "訓練データに合わせすぎる現象です。", "学習不足です。"
GOOD2, BAD2 = "重みに罰則を加える方法です。", "データを増やすことです。"
SYSTEM = "丁寧に答えてください。"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


# Each shape users bring, as published (two small Japanese rows), the line its form is printed with and the
# standard rows it must convert to, all written out by hand: adding a form must keep every one of them.
CORPUS = {
    "HuggingFaceH4/ultrafeedback_binarized": (
        [
            {
                "prompt": Q1,
                "prompt_id": "p1",
                "chosen": [user(Q1), answer(GOOD1)],
                "rejected": [user(Q1), answer(BAD1)],
                "messages": [user(Q1), answer(GOOD1)],
                "score_chosen": 8.0,
                "score_rejected": 3.0,
            },
            {
                "prompt": Q2,
                "prompt_id": "p2",
                "chosen": [user(Q2), answer(GOOD2)],
                "rejected": [user(Q2), answer(BAD2)],
                "messages": [user(Q2), answer(GOOD2)],
                "score_chosen": 7.5,
                "score_rejected": 2.0,
            },
        ],
        "form: implicit, messages (detected; not sharegpt: messages ends with an assistant turn",
        [
            {
                "prompt": [user(Q1)],
                "chosen": [answer(GOOD1)],
                "rejected": [answer(BAD1)],
                "prompt_id": "p1",
                "messages": [user(Q1), answer(GOOD1)],
                "score_chosen": 8.0,
                "score_rejected": 3.0,
            },
            {
                "prompt": [user(Q2)],
                "chosen": [answer(GOOD2)],
                "rejected": [answer(BAD2)],
                "prompt_id": "p2",
                "messages": [user(Q2), answer(GOOD2)],
                "score_chosen": 7.5,
                "score_rejected": 2.0,
            },
        ],
    ),
    "Anthropic/hh-rlhf": (
        [
            {
                "chosen": f"\n\nHuman: {Q1}\n\nAssistant: {GOOD1}",
                "rejected": f"\n\nHuman: {Q1}\n\nAssistant: {BAD1}",
            },
            {
                "chosen": f"\n\nHuman: {Q1}\n\nAssistant: {GOOD1}\n\nHuman: {Q2}\n\nAssistant: {GOOD2}",
                "rejected": f"\n\nHuman: {Q1}\n\nAssistant: {GOOD1}\n\nHuman: {Q2}\n\nAssistant: {BAD2}",
            },
        ],
        "form: hh, text (detected)",
        [
            {"prompt": [user(Q1)], "chosen": [answer(GOOD1)], "rejected": [answer(BAD1)]},
            {"prompt": [user(Q1), answer(GOOD1), user(Q2)], "chosen": [answer(GOOD2)], "rejected": [answer(BAD2)]},
        ],
    ),
    "llm-jp/hh-rlhf-12k-ja": (
        [
            {"conversations": [{"from": "human", "value": Q1}], "chosen": GOOD1, "rejected": BAD1},
            {
                "conversations": [
                    {"from": "human", "value": Q1},
                    {"from": "gpt", "value": GOOD1},
                    {"from": "human", "value": Q2},
                ],
                "chosen": GOOD2,
                "rejected": BAD2,
            },
        ],
        "form: sharegpt (detected)",
        [
            {"prompt": [user(Q1)], "chosen": [answer(GOOD1)], "rejected": [answer(BAD1)]},
            {"prompt": [user(Q1), answer(GOOD1), user(Q2)], "chosen": [answer(GOOD2)], "rejected": [answer(BAD2)]},
        ],
    ),
    "argilla/distilabel-intel-orca-dpo-pairs": (
        [
            {
                "system": SYSTEM,
                "input": Q1,
                "chosen": GOOD1,
                "rejected": BAD1,
                "generations": [GOOD1, BAD1],
                "order": ["chosen", "rejected"],
                "rating": [9.0, 3.0],
                "status": "tie",
                "chosen_score": 9.0,
                "in_gsm8k_train": False,
            },
            {
                "system": "",
                "input": Q2,
                "chosen": GOOD2,
                "rejected": BAD2,
                "generations": [BAD2, GOOD2],
                "order": ["rejected", "chosen"],
                "rating": [2.0, 8.0],
                "status": "swapped",
                "chosen_score": 8.0,
                "in_gsm8k_train": False,
            },
        ],
        "recognised by name (set the key to read another): data.prompt_column input",
        [
            {
                "prompt": [system(SYSTEM), user(Q1)],
                "chosen": [answer(GOOD1)],
                "rejected": [answer(BAD1)],
                "generations": [GOOD1, BAD1],
                "order": ["chosen", "rejected"],
                "rating": [9.0, 3.0],
                "status": "tie",
                "chosen_score": 9.0,
                "in_gsm8k_train": False,
            },
            {
                "prompt": [user(Q2)],
                "chosen": [answer(GOOD2)],
                "rejected": [answer(BAD2)],
                "generations": [BAD2, GOOD2],
                "order": ["rejected", "chosen"],
                "rating": [2.0, 8.0],
                "status": "swapped",
                "chosen_score": 8.0,
                "in_gsm8k_train": False,
            },
        ],
    ),
    "Intel/orca_dpo_pairs": (
        [
            {"system": SYSTEM, "question": Q1, "chosen": GOOD1, "rejected": BAD1},
            {"system": "", "question": Q2, "chosen": GOOD2, "rejected": BAD2},
        ],
        "recognised by name (set the key to read another): data.prompt_column question",
        [
            {"prompt": [system(SYSTEM), user(Q1)], "chosen": [answer(GOOD1)], "rejected": [answer(BAD1)]},
            {"prompt": [user(Q2)], "chosen": [answer(GOOD2)], "rejected": [answer(BAD2)]},
        ],
    ),
    "OpenAI preference fine-tuning JSONL": (
        [
            {
                "input": {"messages": [user(Q1)], "tools": [], "parallel_tool_calls": True},
                "preferred_output": [answer(GOOD1)],
                "non_preferred_output": [answer(BAD1)],
            },
            {
                "input": {"messages": [{"role": "developer", "content": SYSTEM}, user(Q2)]},
                "preferred_output": [answer(GOOD2)],
                "non_preferred_output": [answer(BAD2)],
            },
        ],
        "form: openai (detected)",
        [
            {"prompt": [user(Q1)], "chosen": [answer(GOOD1)], "rejected": [answer(BAD1)]},
            {"prompt": [system(SYSTEM), user(Q2)], "chosen": [answer(GOOD2)], "rejected": [answer(BAD2)]},
        ],
    ),
    "TRL standard": (
        [{"prompt": Q1, "chosen": GOOD1, "rejected": BAD1}, {"prompt": Q2, "chosen": GOOD2, "rejected": BAD2}],
        "form: standard, text (detected)",
        [{"prompt": Q1, "chosen": GOOD1, "rejected": BAD1}, {"prompt": Q2, "chosen": GOOD2, "rejected": BAD2}],
    ),
    "TRL conversational": (
        [
            {"prompt": [user(Q1)], "chosen": [answer(GOOD1)], "rejected": [answer(BAD1)]},
            {"prompt": [system(SYSTEM), user(Q2)], "chosen": [answer(GOOD2)], "rejected": [answer(BAD2)]},
        ],
        "form: standard, messages (detected)",
        [
            {"prompt": [user(Q1)], "chosen": [answer(GOOD1)], "rejected": [answer(BAD1)]},
            {"prompt": [system(SYSTEM), user(Q2)], "chosen": [answer(GOOD2)], "rejected": [answer(BAD2)]},
        ],
    ),
    "TRL implicit prompt": (
        [
            {"chosen": f"質問：{Q1}\n回答：{GOOD1}", "rejected": f"質問：{Q1}\n回答：{BAD1}"},
            {"chosen": f"質問：{Q2}\n回答：{GOOD2}", "rejected": f"質問：{Q2}\n回答：{BAD2}"},
        ],
        "form: implicit, text (detected)",
        [
            {"prompt": f"質問：{Q1}\n回答：", "chosen": GOOD1, "rejected": BAD1},
            {"prompt": f"質問：{Q2}\n回答：", "chosen": GOOD2, "rejected": BAD2},
        ],
    ),
    "openbmb/UltraFeedback (ranked)": (
        [
            {
                "source": "evol_instruct",
                "instruction": Q1,
                "models": ["a", "b"],
                "completions": [
                    {"model": "a", "response": BAD1, "overall_score": 3.0, "custom_system_prompt": ""},
                    {"model": "b", "response": GOOD1, "overall_score": 8.5, "custom_system_prompt": ""},
                ],
            },
            {
                "source": "evol_instruct",
                "instruction": Q2,
                "models": ["a", "b", "c"],
                "completions": [
                    {"model": "a", "response": GOOD2, "overall_score": 9.0, "custom_system_prompt": ""},
                    {"model": "b", "response": "罰則です。", "overall_score": 5.0, "custom_system_prompt": ""},
                    {"model": "c", "response": BAD2, "overall_score": 1.0, "custom_system_prompt": ""},
                ],
            },
        ],
        "recognised by name (set the key to read another): data.ranked_column completions, data.ranked_text_field "
        "response, data.ranked_score_field overall_score, data.prompt_column instruction",
        [
            {
                "prompt": Q1,
                "chosen": GOOD1,
                "rejected": BAD1,
                "source": "evol_instruct",
                "models": ["a", "b"],
                "chosen_score": 8.5,
                "rejected_score": 3.0,
            },
            {
                "prompt": Q2,
                "chosen": GOOD2,
                "rejected": BAD2,
                "source": "evol_instruct",
                "models": ["a", "b", "c"],
                "chosen_score": 9.0,
                "rejected_score": 1.0,
            },
        ],
    ),
    "TRL unpaired (KTO)": (
        [{"prompt": Q1, "completion": GOOD1, "label": True}, {"prompt": Q1, "completion": BAD1, "label": False}],
        "form: unpaired, text (detected)",
        [{"prompt": Q1, "completion": GOOD1, "label": True}, {"prompt": Q1, "completion": BAD1, "label": False}],
    ),
}


@pytest.mark.parametrize("shape", CORPUS)
def test_a_published_shape_is_read_as_it_is_meant_and_its_conversion_reads_back(
    shape: str, runner, tmp_path: Path
) -> None:
    rows, first_line, expected = CORPUS[shape]
    source = write_jsonl(tmp_path / "published.jsonl", rows)
    linted = invoke(runner, "data", "lint", source)
    assert linted.exit_code == 0 and linted.output.startswith(first_line), linted.output
    assert "No findings." in linted.output
    converted, _ = standard_splits(read_source(str(source)), DataSection(source=str(source)))
    assert converted == {"train": expected}
    out = tmp_path / "standard.jsonl"  # issue 38: every form's output reads back through lint as the same rows
    assert invoke(runner, "data", "convert", source, "--out", out).exit_code == 0
    again, report = standard_splits(read_source(str(out)), DataSection(source=str(out)))
    assert again == {"train": expected} and report.form in ("standard", "unpaired") and not report.findings


def test_form_forces_a_reading_and_an_ambiguous_file_names_its_candidates(runner, tmp_path: Path) -> None:
    ultrafeedback = write_jsonl(tmp_path / "uf.jsonl", CORPUS["HuggingFaceH4/ultrafeedback_binarized"][0])
    forced = invoke(runner, "data", "lint", ultrafeedback, "--form", "sharegpt")
    assert forced.exit_code == 1 and forced.output.startswith("form: sharegpt (data.form): ")
    assert "prompt-ends-with-answer | train | 1, 2 | messages ends with an assistant turn" in forced.output

    two_prompts = write_jsonl(
        tmp_path / "two.jsonl", [{"instruction": "説明して。", "input": Q1, "chosen": GOOD1, "rejected": BAD1}]
    )
    ambiguous = invoke(runner, "data", "lint", two_prompts)
    assert ambiguous.exit_code == 1
    assert (
        "ambiguous-form | train | - | columns input and instruction could each be the prompt; set data.prompt_column "
        "to the one meant, or to a list of them to join them (e.g. [input, instruction])" in ambiguous.output
    )
    joined = invoke(runner, "data", "lint", two_prompts, "--set", "data.prompt_column=[instruction, input]")
    assert joined.exit_code == 0, joined.output

    # a conversation column and a prompt column, each a prompt of its own: two readings, two different pairs
    both = {"conversations": [user(Q1)], "prompt": Q2, "chosen": GOOD1, "rejected": BAD1}
    rows, found, _ = convert([both])
    assert rows == [] and found == {
        ("ambiguous-form", ()): "the rows read as sharegpt and as standard give different pairs; set data.form "
        "(--form) to the one the data means"
    }
    rows, found, notes = convert([both], form="standard")
    assert found == {} and rows[0]["prompt"] == Q2 and notes[0].startswith("form: standard, text (data.form)")


def test_a_system_column_on_ranked_rows_becomes_each_pairs_system_turn() -> None:
    rows = [
        {
            "system": SYSTEM,
            "prompt": Q1,
            "responses": [{"text": BAD1, "score": 2}, {"text": GOOD1, "score": 8}],
        },
        {"system": "", "prompt": Q2, "responses": [{"text": GOOD2, "score": 9}, {"text": BAD2, "score": 1}]},
    ]
    converted, found, notes = convert(rows)
    assert found == {} and notes[1].startswith("system: column 'system' becomes the prompt's first message")
    assert converted == [
        {
            "prompt": [system(SYSTEM), user(Q1)],
            "chosen": [answer(GOOD1)],
            "rejected": [answer(BAD1)],
            "chosen_score": 8.0,
            "rejected_score": 2.0,
        },
        {
            "prompt": [user(Q2)],
            "chosen": [answer(GOOD2)],
            "rejected": [answer(BAD2)],
            "chosen_score": 9.0,
            "rejected_score": 1.0,
        },
    ]
    per_row = [  # one answer a row: rows of one prompt under two system prompts are two prompts
        {"system": SYSTEM, "prompt": Q1, "answer": GOOD1, "rank": 1},
        {"system": SYSTEM, "prompt": Q1, "answer": BAD1, "rank": 2},
        {"system": "短く。", "prompt": Q1, "answer": BAD1, "rank": 1},
        {"system": "短く。", "prompt": Q1, "answer": GOOD1, "rank": 2},
    ]
    keys = {"form": "ranked", "ranked_column": "answer", "ranked_score_field": "rank", "ranked_better": "lower"}
    converted, found, _ = convert(per_row, **keys)
    assert found == {} and [(row["prompt"][0]["content"], row["chosen"]) for row in converted] == [
        (SYSTEM, [answer(GOOD1)]),
        ("短く。", [answer(BAD1)]),
    ]


# ---------------------------------------------------------------------------- every reader on random Unicode

SPECIAL = "\u2028\u2029\u0085\x00\x1c\r\n\t\u200b\u200f\u202e\ufeff\ud800\udfff"  # separators, controls, RTL, halves


def message(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


# form: (the published row(s) built from system, question, good and bad text; the texts each must convert to)
SHAPES = {
    "standard text": lambda s, q, a, b: ([{"prompt": q, "chosen": a, "rejected": b}], [[q], [a], [b]]),
    "standard messages": lambda s, q, a, b: (
        [
            {
                "prompt": [message("system", s), message("user", q)],
                "chosen": [message("assistant", a)],
                "rejected": [message("assistant", b)],
            }
        ],
        [[s, q], [a], [b]],
    ),
    "sharegpt": lambda s, q, a, b: (
        [
            {
                "conversations": [{"from": "system", "value": s}, {"from": "human", "value": q}],
                "chosen": a,
                "rejected": b,
            }
        ],
        [[s, q], [a], [b]],
    ),
    "openai": lambda s, q, a, b: (
        [
            {
                "input": {"messages": [message("developer", s), message("user", q)]},
                "preferred_output": [message("assistant", a)],
                "non_preferred_output": [message("assistant", b)],
            }
        ],
        [[s, q], [a], [b]],
    ),
    "orca": lambda s, q, a, b: (
        [{"system": s, "question": q, "chosen": a, "rejected": b}],
        [[s, q] if s.strip() else [q], [a], [b]],
    ),
    "ultrafeedback": lambda s, q, a, b: (
        [
            {
                "prompt": q,
                "chosen": [message("user", q), message("assistant", a)],
                "rejected": [message("user", q), message("assistant", b)],
                "messages": [message("user", q), message("assistant", a)],
            }
        ],
        [[q], [a], [b]],
    ),
    "hh": lambda s, q, a, b: (
        [{"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {b}"}],
        [[q.strip()], [a.strip()], [b.strip()]],  # HH's turns are cut at their blank lines and trimmed
    ),
    "ranked": lambda s, q, a, b: (
        [{"prompt": q, "responses": [{"text": b, "score": 1}, {"text": a, "score": 2}]}],
        [[q], [a], [b]],
    ),
    "unpaired": lambda s, q, a, b: (
        [{"prompt": q, "completion": a, "label": True}, {"prompt": q, "completion": b, "label": False}],
        [[q], [a], [q], [b]],
    ),
}


def texts(rows: list[dict]) -> list[list[str]]:
    """Every text field of converted rows, in order: a string as itself, messages as their contents."""
    columns = ("prompt", "completion") if "completion" in rows[0] else ("prompt", "chosen", "rejected")
    return [
        [value] if isinstance(value, str) else [m["content"] for m in value]
        for row in rows
        for value in (row[c] for c in columns)
    ]


def read_as_published(rows: list[dict]) -> list[dict] | None:
    """``rows`` written as JSON Lines (raw Unicode where UTF-8 can hold it, escaped where not: a lone surrogate)
    and read back by ``data lint``'s path: the converted rows, or None when a clear error refused them."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        try:
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        except UnicodeEncodeError:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        try:
            splits, report = standard_splits(read_source(str(path)), DataSection(source=str(path)))
        except DataError as err:
            assert str(path) in str(err)  # names the file (and its line)
            return None
        if report.errors:
            assert all(f.rows or f.check in ("empty-split", "unknown-form", "ambiguous-form") for f in report.errors)
            return None
        return splits["train"]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_reader_keeps_random_unicode_exactly_or_refuses_it_clearly(shape: str) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    field = st.text(alphabet=st.characters(exclude_categories=()) | st.sampled_from(SPECIAL), max_size=12)

    @settings(max_examples=30, derandomize=True, deadline=None, database=None)
    @given(field, field, field, field)
    def check(s: str, q: str, a: str, b: str) -> None:
        rows, expected = SHAPES[shape](s, q, a, b)
        converted = read_as_published(rows)
        if converted is not None:
            assert texts(converted) == expected

    check()


def test_sft_data_prompt_completion_and_conversations_read_as_one_answer_a_row() -> None:
    """TRL's prompt-completion form and a conversation a row (the language-modeling form) are SFT's data: read
    as desirable unpaired rows, the conversation's last assistant turn the answer."""
    row = {"prompt": "過学習とは？", "completion": "合わせすぎる現象です。", "id": 3}
    rows, found, notes = convert([row])
    assert not found and rows == [{**row, "label": True}]
    assert notes[-1].startswith("form: completion, text (detected): prompt / completion with no label")
    system = {"role": "system", "content": "簡潔に。"}
    chat = [system, USER, answer("一つ目。"), {"role": "user", "content": "もう少し"}, answer("二つ目です。")]
    rows, found, notes = convert([{"messages": chat}])
    assert not found and rows == [{"prompt": chat[:4], "completion": chat[4:], "label": True}]
    assert notes[-1].startswith("form: chat (detected): a conversation a row: every turn before the last assistant")
    sharegpt = [{"from": "human", "value": "過学習とは？"}, {"from": "gpt", "value": "合わせすぎです。"}]
    rows, found, _ = convert([{"conversations": sharegpt}])
    assert rows[0]["prompt"] == [USER | {"content": "過学習とは？"}]
    assert rows[0]["completion"] == [answer("合わせすぎです。")]
    _, found, _ = convert([{"messages": [USER]}, {"messages": [answer("答え")]}])
    assert found == {
        ("no-assistant-turn", (1,)): "messages has no assistant turn, so there is no answer to train on",
        ("no-user-turn", (2,)): "messages has no user turn, so there is no question to answer",
    }


def test_sft_data_on_the_dpo_and_kto_paths_names_objective_sft(tiny_model: Path, tmp_path: Path) -> None:
    from dpo_recipe.train import run

    source = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"問{i}", "completion": f"答{i}です。"} for i in range(8)])
    with pytest.raises(
        DataError,
        match=r"sft.jsonl holds one answer a row with no judgement \(completion form: .*"
        r"Train it with training.objective: sft",
    ):
        run("tiny-ja", tiny_overrides(tiny_model, f"data.source={source}"), output_dir=str(tmp_path / "dpo"))
    with pytest.raises(DataError, match=r"sft.jsonl holds one answer a row with no label \(completion form\).*KTO"):
        run("tiny-ja-kto", tiny_overrides(tiny_model, f"data.source={source}"), output_dir=str(tmp_path / "kto"))
