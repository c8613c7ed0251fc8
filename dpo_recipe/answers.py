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


def greedy_answer(model: Any, tokenizer: Any, text: str, max_new_tokens: int) -> str:
    """The model's greedy (deterministic) continuation of ``text``, without the prompt."""
    import torch

    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    settings = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        output = model.generate(**inputs, **settings)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def greedy_answers(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int) -> list[dict[str, str]]:
    """Each row's prompt answered by the base (adapter off) and the tuned model: ``prompt``, ``base``, ``tuned``."""
    answers = []
    model.eval()
    for row in rows:
        text = prompt_text(tokenizer, row["prompt"])
        tuned = greedy_answer(model, tokenizer, text, max_new_tokens)
        with model.disable_adapter():
            base = greedy_answer(model, tokenizer, text, max_new_tokens)
        answers.append({"prompt": text, "base": base, "tuned": tuned})
    return answers
