"""A tiny random-init chat model for tests and smoke runs, built offline in seconds.

Its tokenizer is trained on the generated Japanese pairs and, like GPT-2's, has no pad token,
so the tiny path exercises the same pad fallback as DialoGPT. It is saved as an ordinary
model directory and loaded through the same ``from_pretrained`` path as a Hub id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dpo_recipe.data import generator
from dpo_recipe.data.generator import generate_pairs
from dpo_recipe.utils.files import cache_root, cached_folder

TINY_MODEL = "builtin:tiny"  # a model.name_or_path that needs no download and no prior build step

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_model(out_dir: Path, vocab_size: int = 2048, hidden_size: int = 64, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    splits = generate_pairs(1000, seed=0)
    texts = [r[c] for rows in splits.values() for r in rows for c in ("prompt", "chosen", "rejected")]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def cached_tiny_model() -> Path:
    """The tiny model built once per version of this file (and of the generator it trains its tokenizer on)."""
    digest = hashlib.sha256()
    for module in (__file__, generator.__file__):
        digest.update(Path(module).read_bytes())
    return cached_folder(cache_root() / "tiny" / digest.hexdigest()[:16], build_tiny_model)
