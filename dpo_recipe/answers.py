"""Greedy answers from a tuned model, for people to read beside the numbers.

Reward accuracy says whether the adapter prefers the chosen answers; reading what it writes says
whether that preference shows. ``dpo-recipe chat`` (``api.chat``) and the held-out report's
base-versus-tuned table both answer prompts here, greedily, so the same prompt gives the same text.
"""

from __future__ import annotations

from typing import Any


def prompt_text(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """A prompt as training showed it to the model: plain text as is, messages through the chat template.

    TRL tokenizes a plain-text prompt raw (no template), so answering a bare question in the same
    form is what the adapter learned; conversational data was rendered with the template.
    """
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def turn_end_ids(tokenizer: Any) -> list[int]:
    """EOS, plus the token that closes an assistant turn in the chat template (Gemma's ``<end_of_turn>``).

    A chat model ends its answer with the turn marker it was trained on, which is often not EOS;
    without stopping there, generation runs on into an imagined next turn.
    """
    stop = [tokenizer.eos_token_id]
    if tokenizer.chat_template:
        marker = "\u2063ANSWER\u2063"  # an invisible separator no template adds by itself
        turn = [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
        rendered = tokenizer.apply_chat_template(turn, tokenize=False)
        tail = rendered.split(marker, 1)[-1].strip() if marker in rendered else ""
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        if ids and ids[0] in tokenizer.added_tokens_decoder and ids[0] not in stop:  # a marker, not a stray "<"
            stop.append(ids[0])
    return stop


def greedy_answer(
    model: Any,
    tokenizer: Any,
    text: str,
    max_new_tokens: int,
    *,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> str:
    """The model's greedy (deterministic) continuation of ``text``, without the prompt.

    ``repetition_penalty`` and ``no_repeat_ngram_size`` are transformers' own decoding options: a
    model this small loops under pure greedy decoding, and these are what keeps it from doing so.
    """
    import torch

    # a rendered chat prompt already holds its BOS; plain text gets the tokenizer's specials, as in training
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not _starts_with_bos(tokenizer, text))
    settings = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": turn_end_ids(tokenizer),
        "repetition_penalty": repetition_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
    }
    with torch.no_grad():
        output = model.generate(**inputs.to(model.device), **settings)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _starts_with_bos(tokenizer: Any, text: str) -> bool:
    return bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)


def greedy_answers(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int, **decoding: Any
) -> list[dict[str, str]]:
    """Each row's prompt answered by the base (adapter off) and the tuned model: ``prompt``, ``base``, ``tuned``."""
    answers = []
    model.eval()
    for row in rows:
        text = prompt_text(tokenizer, row["prompt"])
        tuned = greedy_answer(model, tokenizer, text, max_new_tokens, **decoding)
        with model.disable_adapter():
            base = greedy_answer(model, tokenizer, text, max_new_tokens, **decoding)
        answers.append({"prompt": text, "base": base, "tuned": tuned})
    return answers
