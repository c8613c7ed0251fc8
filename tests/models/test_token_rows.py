"""The sparse trainable-token forward gives PEFT's outputs and gradients, with and without the adapter."""

from __future__ import annotations

import copy

import pytest
import torch

from dpo_recipe.models.token_rows import use_sparse_token_rows

TOKENS = [3, 7, 11]


def _tiny(kind: str):
    """Two tied-embedding models: Llama (plain embedding) and Gemma 3 (an embedding that scales by sqrt(hidden))."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True}  # fmt: skip
    if kind == "gemma3":
        return Gemma3ForCausalLM(Gemma3TextConfig(**shape, head_dim=16))
    return LlamaForCausalLM(LlamaConfig(**shape))


def _peft(kind: str):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny(kind), LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=TOKENS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "trainable_tokens_delta" in name or "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    return model


def _logits_and_grads(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    logits = model(input_ids=ids).logits
    (logits.log_softmax(-1)[..., 5].sum() + logits[..., TOKENS].sum()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_sparse_rows_match_peft_outputs_and_gradients(kind: str) -> None:
    peft_model = _peft(kind)
    ours = copy.deepcopy(peft_model)
    assert use_sparse_token_rows(ours) == 2  # the embedding and the LM head tied to it
    ids = torch.tensor([[1, 3, 4, 7, 11, 2, 3, 9]])  # named tokens at several positions, twice for 3
    expected, expected_grads = _logits_and_grads(peft_model, ids)
    logits, grads = _logits_and_grads(ours, ids)
    assert torch.allclose(logits, expected, atol=1e-5)
    deltas = [name for name in expected_grads if "trainable_tokens_delta" in name]
    assert deltas and grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-5), name
    with ours.disable_adapter(), peft_model.disable_adapter():  # the reference: the base's rows
        assert torch.allclose(ours(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(ours(input_ids=ids).logits, logits, atol=1e-3)


def test_a_model_without_token_rows_is_left_alone() -> None:
    from peft import LoraConfig, get_peft_model

    assert use_sparse_token_rows(get_peft_model(_tiny("llama"), LoraConfig(r=4, target_modules=["q_proj"]))) == 0
