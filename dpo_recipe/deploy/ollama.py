"""An Ollama ``Modelfile`` beside an exported GGUF: the prompt form the adapter was trained with, and where to stop.

Ollama writes prompts with Go templates, not Jinja, so a chat template cannot be carried over as
text. The chat formats dpo-recipe's recipes use have a Go form here, keyed by the turn marker
that names them; an adapter trained on plain prompts (``data.as_conversation: false``) gets the
prompt as typed, as ``dpo-recipe chat`` feeds it. Decoding is greedy, as ``chat`` and the
held-out answers are, with the recipe's repetition penalty.
"""

from __future__ import annotations

import json
from typing import Any

from dpo_recipe.evaluation.answers import turn_end_ids

GO_CHAT_TEMPLATES = {  # the marker a Jinja chat template opens a turn with -> the same format in Go
    "<|im_start|>": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    ),
    "<start_of_turn>": (
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"
    ),
}
PLAIN_PROMPT = "{{ .Prompt }}"


def go_template(chat_template: str | None, as_conversation: bool) -> str | None:
    """The Go form of the prompt the adapter saw in training; None for a chat format without a known one."""
    if not as_conversation:
        return PLAIN_PROMPT
    return next((go for marker, go in GO_CHAT_TEMPLATES.items() if marker in (chat_template or "")), None)


def modelfile(gguf_name: str, tokenizer: Any, *, as_conversation: bool, repetition_penalty: float) -> str:
    """The Modelfile text: ``FROM`` the GGUF beside it, its prompt template, stop tokens and greedy decoding."""
    lines = [
        "# Run it: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_name}",
    ]
    template = go_template(tokenizer.chat_template, as_conversation)
    if template is None:
        lines.append("# No Go form of this chat template is known here: Ollama uses the template in the GGUF.")
    else:
        lines.append(f'TEMPLATE """{template}"""')
    stops = [tokenizer.decode([token]) for token in turn_end_ids(tokenizer)]
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    lines.append("PARAMETER temperature 0")
    if repetition_penalty != 1.0:
        lines.append(f"PARAMETER repeat_penalty {repetition_penalty}")
    return "\n".join(lines) + "\n"
