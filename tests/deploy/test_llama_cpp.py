"""A real GGUF client: llama.cpp (through llama-cpp-python) runs an export as transformers runs it.

llama-cpp-python is source-only on PyPI -- a C++ build of about 8 minutes on one core -- so it is
no dependency of dpo-recipe: this file runs where it is installed (CI's `llama-cpp` job builds it)
and is skipped elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_recipe.deploy.export import export

llama_cpp = pytest.importorskip("llama_cpp")

HELD_OUT = "バッチ正規化とは何か教えてください。"  # a question from a topic the tiny adapter never trained on
NEW_TOKENS = 8


def test_llama_cpp_tokenizes_scores_and_decodes_the_export_as_transformers(tiny_adapter: Path, tmp_path: Path) -> None:
    gguf_dir, merged_dir = tmp_path / "gguf", tmp_path / "merged"
    export(tiny_adapter, gguf_dir, dtype="f32")
    export(tiny_adapter, merged_dir, fmt="safetensors")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    ids = tokenizer(HELD_OUT)["input_ids"]
    with torch.no_grad():
        expected_logits = merged(torch.tensor([ids])).logits[0].numpy()
        expected = merged.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids) :]

    llm = llama_cpp.Llama(str(gguf_dir / "model.gguf"), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    try:
        assert llm.tokenize(HELD_OUT.encode(), add_bos=False, special=True) == ids
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)])
        assert np.abs(logits - expected_logits).max() < 1e-3 * np.abs(expected_logits).max()
        llm.reset()
        decoded = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            decoded.append(token)
            if len(decoded) == NEW_TOKENS:
                break
        assert decoded == expected.tolist()
    finally:
        llm.close()
