"""Trained token rows (``lora.trainable_tokens``) without copying the vocabulary every forward.

PEFT's ``TrainableTokensLayer`` writes the trained rows into a copy of the whole embedding matrix
on every forward (Gemma 3: 262,144 × 640 floats, 670 MB), and where that matrix is tied to the LM
head, autograd then computes the gradient of the whole head weight only to keep two of its rows:
a training step took 2.5× as long as with LoRA alone. Here the frozen matrix does what it always
does, and only the named rows' outputs are replaced by the trained ones:

- embedding: look up every token in the frozen matrix, then put the trained rows where the input
  is one of the named tokens;
- tied LM head: project through the frozen matrix, then overwrite the named tokens' logits with
  the hidden state times their trained rows.

The numbers are PEFT's (tests/test_token_rows.py compares outputs and gradients with PEFT's own
forward); what is saved, loaded and pushed is PEFT's adapter format, unchanged.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


def use_sparse_token_rows(model: Any) -> int:
    """Route every PEFT trainable-token layer in ``model`` through ``sparse_forward``; returns how many."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layers = [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]
    for layer in layers:
        layer.forward_adapters = types.MethodType(sparse_forward, layer)
    return len(layers)


def sparse_forward(layer: Any, x: torch.Tensor, active_adapters: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
    """``TrainableTokensLayer.forward_adapters`` for one active adapter, computed on the named rows only."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    if layer.disable_adapters or layer.merged or len(active_adapters) != 1:  # PEFT's own path: base, or a mix
        return TrainableTokensLayer.forward_adapters(layer, x, active_adapters, *args, **kwargs)
    (name,) = active_adapters
    base = layer.base_layer
    delta = layer.trainable_tokens_delta[name]
    index = torch.tensor(layer.token_indices[name], device=delta.device)
    if isinstance(base, torch.nn.Embedding):
        result = base(x)  # the frozen rows, with the layer's own scaling (Gemma multiplies by sqrt(hidden))
        slot = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=x.device)
        slot[index] = torch.arange(len(index), device=x.device)
        slot = slot[x]
        trained = F.embedding(slot.clamp(min=0), delta.to(result.dtype))
        scale = layer._get_embed_scale()
        if scale is not None:
            trained = trained * scale.to(trained.dtype)
        return torch.where((slot >= 0)[..., None], trained, result)
    if isinstance(base, torch.nn.Linear):  # an LM head tied to the embedding
        # in place: the frozen projection keeps no output for its backward, so overwriting it is safe and
        # saves a copy of the logits
        return base(x).index_copy_(-1, index, F.linear(x, delta.to(x.dtype)))
    return TrainableTokensLayer.forward_adapters(layer, x, active_adapters, *args, **kwargs)
