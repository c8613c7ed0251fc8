"""GGUF files written from Hub-style models of each supported architecture, read back by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_recipe.deploy.gguf_writer import QUANT_TYPES, check_exportable, tensor_type, tokenizer_kind, write_gguf
from dpo_recipe.errors import ExportError

SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def gpt2(vocab_size: int) -> torch.nn.Module:
    from transformers import GPT2Config

    # 1024 positions: transformers' GGUF loader reads GPT-2's context length into n_ctx, leaving n_positions at 1024
    config = GPT2Config(vocab_size=vocab_size, n_positions=1024, n_embd=64, n_layer=2, n_head=4)
    config.bos_token_id = config.eos_token_id = 2
    return AutoModelForCausalLM.from_config(config)


def gemma3(vocab_size: int) -> torch.nn.Module:
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=vocab_size, num_key_value_heads=1, head_dim=16, **SIZES)
    return AutoModelForCausalLM.from_config(config)


def llama(vocab_size: int) -> torch.nn.Module:
    from transformers import LlamaConfig

    # an untied LM head is written as output.weight
    config = LlamaConfig(vocab_size=vocab_size, num_key_value_heads=2, tie_word_embeddings=False, **SIZES)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("build", [gpt2, gemma3, llama], ids=["gpt2", "gemma3", "llama-untied"])
def test_each_architecture_reads_back_exactly_in_f32(build, tiny_model: Path, tmp_path: Path) -> None:
    """Every parameter random (norms too), so each layout fix -- GPT-2's transposes, Gemma's norm
    offset, Llama's rotary permutation -- shows in the logits if it were wrong."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = build(len(tokenizer)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    check_exportable(model, tokenizer, None)
    write_gguf(tmp_path / "model.gguf", model, tokenizer, "f32", None)
    read_back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="model.gguf", dtype=torch.float32)
    ids = torch.tensor([tokenizer("AIとは何ですか？ 機械学習の一分野です。")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(read_back(ids).logits, model(ids).logits, atol=1e-4)
    assert type(read_back) is type(model)


def test_the_stored_type_follows_dtype_and_quant() -> None:
    assert (tensor_type(None, None), tensor_type("bf16", None), tensor_type("f16", "Q8_0")) == ("f16", "bf16", "q8_0")
    assert QUANT_TYPES == ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
    with pytest.raises(ExportError, match="--quant iq4_xs: gguf-py cannot write it"):
        tensor_type("f16", "iq4_xs")


def test_tokenizers_and_rope_scaling_it_cannot_describe_fail_before_writing(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer_kind(tokenizer) == ("gpt2", "gpt-2")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    odd = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    with pytest.raises(ExportError, match="is not one this exporter can describe in GGUF metadata"):
        tokenizer_kind(odd)

    rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    rope.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=128)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    config.rope_parameters = rope
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    with pytest.raises(ExportError, match="uses 'llama3' rope scaling, which this exporter does not write"):
        check_exportable(skeleton, tokenizer, None)
