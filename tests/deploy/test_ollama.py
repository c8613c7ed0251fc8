"""The Ollama Modelfile: the prompt form the adapter was trained with, stop tokens, greedy decoding."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from dpo_recipe.deploy.ollama import PLAIN_PROMPT, go_template, modelfile
from dpo_recipe.models.loading import read_chat_template


def test_chatml_turns_stop_at_the_turn_end_and_decode_greedily(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)  # ChatML: <|im_start|> ... <|im_end|>
    text = modelfile("model.gguf", tokenizer, as_conversation=True, repetition_penalty=1.2)
    assert text.splitlines() == [
        "# Run it: ollama create NAME -f Modelfile && ollama run NAME",
        "FROM ./model.gguf",
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
        "{{ .Content }}<|im_end|>",
        "{{ end }}<|im_start|>assistant",
        '"""',
        'PARAMETER stop "<|im_end|>"',
        "PARAMETER temperature 0",
        "PARAMETER repeat_penalty 1.2",
    ]


def test_plain_prompts_stay_plain_and_the_gemma_turns_have_their_go_form(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = modelfile("model.gguf", tokenizer, as_conversation=False, repetition_penalty=1.0)
    assert f'TEMPLATE """{PLAIN_PROMPT}"""' in text and "repeat_penalty" not in text
    gemma = go_template(read_chat_template("gemma"), as_conversation=True)
    assert gemma.startswith("{{- range .Messages }}<start_of_turn>") and gemma.endswith("<start_of_turn>model\n")
    assert go_template("{{ messages }}", as_conversation=True) is None
    tokenizer.chat_template = "{% for m in messages %}### {{ m['content'] }}{% endfor %}"
    unknown = modelfile("model.gguf", tokenizer, as_conversation=True, repetition_penalty=1.0)
    assert "TEMPLATE" not in unknown and "Ollama uses the template in the GGUF" in unknown
