"""The shape every form's turns must have, checked in one place so that every reader refuses the same things.

A *prompt* is turns ending in a user turn, with a system turn only first; an *answer* is assistant turns
only. A message carries a role and text content; any other field with a value (OpenAI's ``tool_calls``,
``function_call``, ``tool_call_id``, image parts, …) is refused rather than dropped, because dropping it
would train on text the data did not mean. The forms (``dpo_recipe.data.forms``) call these on the turns
they read; a broken rule is a ``RowProblem`` that becomes a lint finding naming the row and field.
"""

from __future__ import annotations

import copy
from typing import Any

from dpo_recipe.config.schema import DataSection
from dpo_recipe.config.vocabulary import CHAT_ROLES

Turns = list[dict[str, str]]

ROLES = CHAT_ROLES
ROLE_NAMES = {  # role names published chat data uses, onto TRL's (data.roles adds the data's own)
    "system": "system",
    "developer": "system",  # OpenAI's newer name for it
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}
MESSAGE_KEYS = ("role", "content")  # what a message of TRL's conversational form holds


class RowProblem(Exception):
    """Why one row cannot be converted: a lint check name, the field, and what is wrong with it."""

    def __init__(self, check: str, column: str, detail: str) -> None:
        super().__init__(detail)
        self.check, self.column, self.detail = check, column, detail


def role_names(data: DataSection, *, aliases: bool) -> dict[str, str]:
    """Role names a form reads, onto TRL's: the chat forms know the usual aliases; every form takes data.roles."""
    known = ROLE_NAMES if aliases else {role: role for role in ROLES}
    return {**known, **data.roles}


def checked_messages(value: Any, column: str, names: dict[str, str] | None = None) -> Turns:
    """A checked conversation, each message reduced to role and content (one Arrow type for every row), its
    roles mapped by ``names`` (default: TRL's own role names only). A field beyond role and content that holds
    something is refused: it would not reach training."""
    names = {role: role for role in ROLES} if names is None else names
    if not isinstance(value, list) or not value:
        raise RowProblem("not-messages", column, "must be a non-empty list of {role, content} messages")
    for message in value:
        if not isinstance(message, dict):
            raise RowProblem("not-messages", column, "holds an item that is not a {role, content} message")
        role = message.get("role")
        if (names.get(role) if isinstance(role, str) else None) not in ROLES:
            what = "a message without a role" if role is None else f"a message with role {role!r}"
            others = sorted(set(names) - set(ROLES))
            also = f" (also read: {', '.join(others)})" if others else ""
            raise RowProblem(
                "unknown-role",
                column,
                f"has {what}; roles are {', '.join(ROLES)}{also}; map other names with data.roles, e.g. "
                f"{{{role or 'NAME'}: user}}",
            )
        if not isinstance(message.get("content"), str):
            raise RowProblem("message-without-content", column, f"has a message without text content (role {role})")
        extra = [key for key, held in message.items() if key not in MESSAGE_KEYS and held not in (None, "", [], {})]
        if extra:
            raise RowProblem(
                "unsupported-field",
                column,
                f"has a message with {', '.join(map(str, extra))}: only role and text content reach training, so "
                "this would be dropped in silence; remove the field or the rows (tool calls and images cannot be "
                "trained here)",
            )
    return [{"role": names[m["role"]], "content": m["content"]} for m in value]


def chat_turns(value: Any, column: str, data: DataSection) -> Turns:
    """ShareGPT ``{from, value}`` or ChatML ``{role, content}`` turns as checked messages, roles mapped.

    TRL's ``maybe_convert_to_chatml`` renames the keys (on a copy: it edits in place)."""
    from trl.data_utils import maybe_convert_to_chatml

    if not isinstance(value, list) or not value or not all(isinstance(turn, dict) for turn in value):
        raise RowProblem("not-messages", column, "must be a non-empty list of {from, value} or {role, content} turns")
    chatml = maybe_convert_to_chatml({"messages": copy.deepcopy(value)})["messages"]
    return checked_messages(chatml, column, role_names(data, aliases=True))


def checked_prompt(turns: Turns, column: str) -> Turns:
    """``turns`` if they are a prompt: a question last, a system turn only first."""
    if not any(turn["role"] == "user" for turn in turns):
        raise RowProblem("no-user-turn", column, "has no user turn, so there is no question to answer")
    if turns[-1]["role"] == "assistant":
        raise RowProblem(
            "prompt-ends-with-answer",
            column,
            "ends with an assistant turn; the answers to compare go in the answer columns, not in the conversation",
        )
    if any(turn["role"] == "system" for turn in turns[1:]):
        raise RowProblem("system-not-first", column, "has a system turn after the first turn; put it first")
    if turns[-1]["role"] != "user":
        raise RowProblem("prompt-ends-with-answer", column, "does not end with a user turn: there is no question")
    return turns


def checked_answer(turns: Turns, column: str) -> Turns:
    """``turns`` if they are an answer: assistant turns only (a user turn inside would be trained as the answer)."""
    if not turns or any(turn["role"] != "assistant" for turn in turns):
        raise RowProblem(
            "answer-not-assistant",
            column,
            "holds a turn that is not the assistant's (a user or system turn inside an answer would be trained as "
            "the answer); an answer is the assistant's text, message or messages",
        )
    return turns


def prompt_turns(value: Any, column: str, data: DataSection) -> Turns:
    """A chat form's conversation column as a checked prompt."""
    return checked_prompt(chat_turns(value, column, data), column)


def answer_turns(value: Any, column: str, data: DataSection) -> Turns:
    """An answer as assistant messages, whether given as text, one message or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, (dict, list)):
        raise RowProblem(
            "not-an-answer", column, "must be the answer: text, one {from, value} / {role, content} message, or a list"
        )
    return checked_answer(chat_turns([value] if isinstance(value, dict) else value, column, data), column)


def last_assistant_turn(conversation: Turns, column: str) -> int:
    """Index of the conversation's last assistant message: where its answer starts."""
    for index in range(len(conversation) - 1, -1, -1):
        if conversation[index]["role"] == "assistant":
            return index
    raise RowProblem("no-assistant-turn", column, "has no assistant turn, so there is no answer to train on")
