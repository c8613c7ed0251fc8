"""The packed path optimises what TRL's DPOTrainer optimises: same loss, same LoRA gradients, same logs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from dpo_recipe.config import load_recipe
from dpo_recipe.data import load_preference_splits
from dpo_recipe.model import load_model, load_tokenizer
from dpo_recipe.packing import pack_pairs, pair_logps
from dpo_recipe.train import dpo_config
from dpo_recipe.trainer import PackedCollator, PackedDPOTrainer


@pytest.fixture(scope="module")
def setup(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    from datasets import Dataset

    recipe = load_recipe("tiny-ja", tiny_overrides(tiny_model, "training.max_length=48"))
    rows, _, _ = load_preference_splits(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    pairs = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[:12]])
    args = dpo_config(recipe, tmp_path_factory.mktemp("packing"))
    return load_model(recipe.model), tokenizer, pairs, args


def _trainers(setup, cache: Path | None):
    """TRL's trainer and ours on copies of one model, each adding a fresh LoRA adapter as in training.

    The B matrices are then set to the same random values in both, so the policy differs from the
    reference (the base with the adapter off) and the loss is not just ln 2.
    """
    from peft import LoraConfig
    from trl import DPOTrainer

    model, tokenizer, pairs, args = setup
    trainers = []
    for trainer_class, extra in ((DPOTrainer, {}), (PackedDPOTrainer, {"ref_cache_dir": cache})):
        trainer = trainer_class(
            model=copy.deepcopy(model),
            args=args,
            train_dataset=pairs,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
            **extra,
        )
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in sorted(trainer.model.named_parameters()):
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        trainers.append(trainer)
    return trainers


def _loss_and_grads(trainer, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def test_loss_and_lora_gradients_match_trl(setup, tmp_path: Path) -> None:
    plain, packed = _trainers(setup, tmp_path / "cache")
    rows = [plain.train_dataset[i] for i in range(4)]
    assert [packed.train_dataset[i]["chosen_ids"] for i in range(4)] == [r["chosen_ids"] for r in rows]
    trl_loss, trl_grads = _loss_and_grads(plain, plain.data_collator(rows))
    ours_loss, our_grads = _loss_and_grads(packed, packed.data_collator([packed.train_dataset[i] for i in range(4)]))
    assert trl_loss > 0.1 and ours_loss == pytest.approx(trl_loss, rel=1e-4)
    assert trl_grads.keys() == our_grads.keys() and len(trl_grads) == 8  # A and B of q, v in 2 layers
    for name, grad in trl_grads.items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(our_grads[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item()), name
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        # rewards are beta x (differences of log-probs near -400): compare them on the log-probs' scale
        expected = pytest.approx(plain._metrics["train"][key][-1], rel=1e-4, abs=1e-5)
        assert packed._metrics["train"][key][-1] == expected, key
    assert packed._metrics["train"]["rewards/accuracies"] == plain._metrics["train"]["rewards/accuracies"]


def test_reference_logps_are_cached_and_reused(setup, tmp_path: Path) -> None:
    from peft import LoraConfig

    cache = tmp_path / "cache"
    plain, packed = _trainers(setup, cache)
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    # the reference TRL computes on the fly (adapter off) equals the precomputed one
    batch = plain.data_collator([plain.train_dataset[i] for i in range(12)])
    with torch.no_grad():
        trl_ref = plain.compute_ref_log_probs(plain.model, batch)
    assert torch.allclose(torch.tensor(packed.train_dataset["ref_chosen_logps"]), trl_ref[0], rtol=1e-5)
    assert torch.allclose(torch.tensor(packed.train_dataset["ref_rejected_logps"]), trl_ref[1], rtol=1e-5)
    # a second trainer reads the file instead of running the reference pass
    stamp = files[0].stat().st_mtime_ns
    _, again = _trainers(setup, cache)
    assert files[0].stat().st_mtime_ns == stamp and list(cache.glob("*.safetensors")) == files
    assert again.train_dataset["ref_chosen_logps"] == packed.train_dataset["ref_chosen_logps"]
    # another max_length is another key
    model, tokenizer, pairs, args = setup
    shorter = copy.deepcopy(args)
    shorter.max_length = 32
    PackedDPOTrainer(
        model=copy.deepcopy(model),
        args=shorter,
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
        ref_cache_dir=cache,
    )
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_packing_rejected_never_sees_chosen(setup) -> None:
    """Changing a chosen token changes no rejected log-prob, and pairs in one row do not see each other."""
    model = setup[0]
    rows = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 10], "rejected_ids": [11, 12]},
        {"prompt_ids": [13, 14], "chosen_ids": [15], "rejected_ids": [16, 17, 18]},
    ]
    altered = copy.deepcopy(rows)
    altered[0]["chosen_ids"] = [20, 21, 22]
    with torch.no_grad():
        base = pair_logps(model, pack_pairs(rows, None))
        changed = pair_logps(model, pack_pairs(altered, None))
        alone = pair_logps(model, pack_pairs(rows[1:], None))
    assert not torch.equal(base[0][0], changed[0][0])
    assert torch.equal(base[1], changed[1]) and torch.equal(base[0][1], changed[0][1])
    assert torch.allclose(base[0][1], alone[0][0], rtol=1e-6) and torch.allclose(base[1][1], alone[1][0], rtol=1e-6)
    packed = PackedCollator(max_length=4)(rows)  # keep_start: prompt + completion cut to 4 tokens
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 11, 13, 14, 15, 16, 17]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 3, 0, 1, 2, 2, 3]]
    assert packed["predictor_index"].tolist() == [2, 2, 6, 6, 8]
    assert packed["target_ids"].tolist() == [8, 11, 15, 16, 17]
    assert packed["segment"].tolist() == [0, 1, 2, 3, 3]
    assert packed["attention_mask"][0, 0, 4].tolist() == [True, True, True, False, True] + [False] * 5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_logps_equal_one_row_per_sequence(family: str, attention: str) -> None:
    """Both position schemes (rotary, learned absolute) take the restarted positions and the block mask,
    under both attention implementations the packed path accepts (eager adds the mask to the scores)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64))
    else:
        config = LlamaConfig(
            vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
        model = LlamaForCausalLM(config)
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    rows = [
        {"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [12, 13]},
        {"prompt_ids": [20, 21], "chosen_ids": [22], "rejected_ids": [23, 24, 25, 26]},
    ]
    with torch.no_grad():
        chosen, rejected = pair_logps(model.eval(), pack_pairs(rows, None))
        expected = []
        for row in rows:
            for completion in (row["chosen_ids"], row["rejected_ids"]):
                sequence, start = row["prompt_ids"] + completion, len(row["prompt_ids"])
                logps = model(torch.tensor([sequence])).logits[0].log_softmax(-1)
                expected.append(sum(logps[start - 1 + j, sequence[start + j]] for j in range(len(completion))))
    assert torch.allclose(torch.stack([chosen[0], rejected[0], chosen[1], rejected[1]]), torch.stack(expected))
