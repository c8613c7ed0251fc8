"""The turn-shape rules every form's reader shares (dpo_recipe/data/turns.py): a field a form cannot carry is
refused, an answer holding a user turn is refused, whichever form the row arrives in."""

from __future__ import annotations

from dpo_recipe.config.schema import DataSection
from dpo_recipe.data.forms import to_standard

Q, GOOD, BAD = "過学習とは何ですか？", "訓練データに合わせすぎる現象です。", "学習不足です。"
USER, CHOSEN, REJECTED = (
    {"role": "user", "content": Q},
    {"role": "assistant", "content": GOOD},
    {"role": "assistant", "content": BAD},
)
ANSWER_HOLDS_USER = (
    "holds a turn that is not the assistant's (a user or system turn inside an answer would be trained as the "
    "answer); an answer is the assistant's text, message or messages"
)


def findings(rows: list[dict], **keys) -> dict[tuple[str, tuple[int, ...]], str]:
    conversion = to_standard({"train": rows}, DataSection(source="pairs.jsonl", **keys))
    return {(f.check, tuple(f.rows)): f.message for f in conversion.findings}


def test_openai_tool_calls_are_refused_not_dropped() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    rows = [
        {
            "input": {"messages": [USER]},
            "preferred_output": [{"role": "assistant", "content": "", "tool_calls": [call]}],
            "non_preferred_output": [REJECTED],
        },
        {  # empty fields beside role and content carry nothing, so they are no loss
            "input": {"messages": [USER]},
            "preferred_output": [{**CHOSEN, "tool_calls": None}],
            "non_preferred_output": [{**REJECTED, "tool_calls": []}],
        },
    ]
    assert findings(rows) == {
        ("unsupported-field", (1,)): "preferred_output has a message with tool_calls: only role and text content reach "
        "training, so this would be dropped in silence; remove the field or the rows (tool calls and images cannot "
        "be trained here)"
    }
    image = {"role": "user", "content": Q, "images": ["cat.png"]}
    assert findings([{"prompt": [image], "chosen": [CHOSEN], "rejected": [REJECTED]}]) == {
        ("unsupported-field", (1,)): "prompt has a message with images: only role and text content reach training, "
        "so this would be dropped in silence; remove the field or the rows (tool calls and images cannot be trained "
        "here)"
    }


def test_an_answer_holding_a_user_turn_is_refused_in_every_form() -> None:
    hh = [
        {
            "chosen": f"\n\nHuman: {Q}\n\nAssistant: {GOOD}\n\nHuman: ほかには？",
            "rejected": f"\n\nHuman: {Q}\n\nAssistant: {BAD}",
        }
    ]
    assert findings(hh) == {("answer-not-assistant", (1,)): f"chosen {ANSWER_HOLDS_USER}"}
    standard = [{"prompt": [USER], "chosen": [CHOSEN, USER], "rejected": [REJECTED]}]
    assert findings(standard) == {("answer-not-assistant", (1,)): f"chosen {ANSWER_HOLDS_USER}"}
    implicit = [{"chosen": [USER, CHOSEN, USER], "rejected": [USER, REJECTED]}]
    assert findings(implicit) == {("answer-not-assistant", (1,)): f"chosen {ANSWER_HOLDS_USER}"}
    unpaired = [{"prompt": [USER], "completion": [CHOSEN, USER], "label": True}]
    assert findings(unpaired) == {("answer-not-assistant", (1,)): f"completion {ANSWER_HOLDS_USER}"}
    sharegpt = [{"conversations": [{"from": "human", "value": Q}], "chosen": [CHOSEN, USER], "rejected": BAD}]
    assert findings(sharegpt) == {("answer-not-assistant", (1,)): f"chosen {ANSWER_HOLDS_USER}"}


def test_a_prompt_ends_with_a_user_turn_and_holds_a_system_turn_only_first() -> None:
    system = {"role": "system", "content": "丁寧に。"}
    late = [{"prompt": [USER, system], "chosen": [CHOSEN], "rejected": [REJECTED]}]
    assert findings(late) == {
        ("system-not-first", (1,)): "prompt has a system turn after the first turn; put it first",
    }
    answered = [{"prompt": [USER, CHOSEN], "chosen": [CHOSEN], "rejected": [REJECTED]}]
    assert findings(answered) == {
        ("prompt-ends-with-answer", (1,)): "prompt ends with an assistant turn; the answers to compare go in the "
        "answer columns, not in the conversation",
    }
