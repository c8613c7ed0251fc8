"""Packed pairs give the log-probs of one row per sequence; score_packed scores many pairs that way.

The trainer-level equivalence with TRL's DPOTrainer (loss, gradients, logs) is in tests/test_trainer.py.
"""

from __future__ import annotations

import copy
import doctest
from pathlib import Path

import pytest
import torch
from conftest import TEST_DEVICE, tiny_overrides

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.models.loading import load_model
from dpo_recipe.training import packing
from dpo_recipe.training.packing import (
    OWN_HEAD_MODEL_TYPES,
    longest_first,
    pack_pairs,
    pair_logps,
    score_packed,
    scored_token_logps,
    segment_logps,
    stack_rows,
)
from dpo_recipe.training.trainer import PackedCollator

PAIRS = [  # not sorted by length: score_packed must hand results back in this order
    {"prompt_ids": [5, 6], "chosen_ids": [7], "rejected_ids": [8, 9]},
    {"prompt_ids": [10, 11, 12, 13], "chosen_ids": [14, 15, 16], "rejected_ids": [17, 18, 19, 20]},
    {"prompt_ids": [21], "chosen_ids": [22, 23], "rejected_ids": [24]},
    {"prompt_ids": [25, 26, 27], "chosen_ids": [28, 29, 30, 31, 32], "rejected_ids": [33, 34]},
    {"prompt_ids": [35, 36], "chosen_ids": [37, 38], "rejected_ids": [39, 40, 41]},
]


@pytest.fixture(scope="module")
def model(tiny_model: Path):
    return load_model(load_recipe("tiny-ja", tiny_overrides(tiny_model)).model)


def test_packing_rejected_never_sees_chosen(model) -> None:
    """Changing a chosen token changes no rejected log-prob, and pairs in one row do not see each other."""
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


def _small_model(family: str, vocab_size: int = 300):
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab_size, n_positions=64)
        return transformers.GPT2LMHeadModel(config)
    shape = {"vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    shape |= {"num_attention_heads": 4, "num_key_value_heads": 2}
    if family in ("gemma2", "gemma3"):  # a sliding-window layer and a global one, as Gemma alternates them
        shape |= {"num_key_value_heads": 1, "head_dim": 16, "layer_types": ["sliding_attention", "full_attention"]}
        # the final-logit soft-cap is part of the head: small enough to bend a random model's logits
        shape |= {"final_logit_softcapping": 2.0}
    if family == "gemma2":
        return transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**shape))
    if family == "gemma3":
        return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**shape))
    classes = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    config = getattr(transformers, f"{classes}Config")(**shape)
    return getattr(transformers, f"{classes}ForCausalLM")(config)


# one model of each type whose head the forward-only passes compute themselves (packing.OWN_HEAD_MODEL_TYPES)
OWN_HEAD_FAMILIES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2"}
OWN_HEAD_FAMILIES |= {"gemma2": "gemma2", "gemma3": "gemma3_text"}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_packed_logps_equal_one_row_per_sequence(family: str, attention: str) -> None:
    """Both position schemes (rotary, learned absolute) and Gemma 3's sliding-window and global layers take
    the restarted positions and the block mask, under both attention implementations the packed path
    accepts (eager adds the mask to the scores). ``DPO_RECIPE_TEST_DEVICE=cuda`` runs it on a GPU."""
    model = _small_model(family).to(TEST_DEVICE)
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    rows = [
        {"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [12, 13]},
        {"prompt_ids": [20, 21], "chosen_ids": [22], "rejected_ids": [23, 24, 25, 26]},
    ]
    with torch.no_grad():
        chosen, rejected = pair_logps(model.eval(), pack_pairs(rows, None).to(TEST_DEVICE))
        expected = []
        for row in rows:
            for completion in (row["chosen_ids"], row["rejected_ids"]):
                sequence, start = row["prompt_ids"] + completion, len(row["prompt_ids"])
                logps = model(torch.tensor([sequence], device=TEST_DEVICE)).logits[0].log_softmax(-1)
                expected.append(sum(logps[start - 1 + j, sequence[start + j]] for j in range(len(completion))))
    assert torch.allclose(torch.stack([chosen[0], rejected[0], chosen[1], rejected[1]]), torch.stack(expected))


def test_a_sliding_window_is_not_applied_inside_a_packed_row() -> None:
    """Why ``trainer.packing_limitation`` refuses max_length beyond a sliding window: the block mask
    replaces the model's own, so a window of 3 tokens is ignored where a plain forward applies it."""
    model = _small_model("gemma3")
    model.config.sliding_window = 3
    row = {"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [12, 13]}
    with torch.no_grad():
        packed, _ = pair_logps(model.eval(), pack_pairs([row], None))
        logps = model(torch.tensor([row["prompt_ids"] + row["chosen_ids"]])).logits[0].log_softmax(-1)
    plain = sum(logps[3 + j, token] for j, token in enumerate(row["chosen_ids"]))
    assert abs(packed.item() - plain.item()) > 1e-3


def test_pack_pairs_docstring_example_runs() -> None:
    result = doctest.testmod(packing)
    assert result.attempted >= 8 and result.failed == 0


def test_longest_first_orders_by_total_tokens() -> None:
    assert longest_first(PAIRS) == [1, 3, 4, 0, 2]  # 11, 10, 7, 5 and 4 tokens


@pytest.fixture
def lora_model(model):
    """The tiny model with a LoRA adapter whose B matrices are random, so adapter on and off differ."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return peft_model


def _alone(model, max_length: int | None) -> torch.Tensor:
    """Each pair scored in its own packed row: (N, 2) chosen and rejected log-probs."""
    with torch.no_grad():
        return torch.tensor([[t.item() for t in pair_logps(model, pack_pairs([p], max_length))] for p in PAIRS])


@pytest.mark.parametrize("max_length", [None, 5])
def test_score_packed_gives_each_pairs_own_logps_in_the_given_order(lora_model, max_length: int | None) -> None:
    lora_model.train()
    scores = score_packed(lora_model, PAIRS, max_length, batch_size=2, policy=True, reference=True)
    assert lora_model.training  # the previous mode is back
    lora_model.eval()
    policy = _alone(lora_model, max_length)
    with lora_model.disable_adapter():
        reference = _alone(lora_model, max_length)
    assert torch.allclose(torch.stack(scores.policy, dim=1), policy, rtol=1e-5)
    assert torch.allclose(torch.stack(scores.reference, dim=1), reference, rtol=1e-5)
    assert (policy - reference).abs().min() > 1e-3  # the adapter changes every score, so the sides are not mixed up
    assert scores.policy[0].dtype == torch.float32 and scores.policy[0].device.type == "cpu"


def test_score_packed_reference_only_and_the_ref_adapter(lora_model) -> None:
    """The reference is TRL's: a "ref" adapter (the frozen start of a re-trained adapter) when there is one."""
    from peft import LoraConfig

    lora_model.eval()
    without_ref = score_packed(lora_model, PAIRS, None, batch_size=3, policy=False, reference=True)
    assert without_ref.policy is None
    with lora_model.disable_adapter():
        assert torch.allclose(torch.stack(without_ref.reference, dim=1), _alone(lora_model, None), rtol=1e-5)
    lora_model.add_adapter("ref", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in lora_model.named_parameters():
            if "lora_B.ref" in name:
                param.fill_(0.02)
    with_ref = score_packed(lora_model, PAIRS, None, batch_size=3, policy=False, reference=True)
    assert lora_model.active_adapter == "default"
    lora_model.set_adapter("ref")
    expected = _alone(lora_model, None)
    lora_model.set_adapter("default")
    assert torch.allclose(torch.stack(with_ref.reference, dim=1), expected, rtol=1e-5)
    assert not torch.allclose(torch.stack(with_ref.reference, dim=1), torch.stack(without_ref.reference, dim=1))


def test_scored_prompts_join_segments_after_every_completion() -> None:
    """ORPO's NLL reads each prompt's tokens after its first: segment 2 * pairs + pair, the completions unchanged."""
    rows = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [8], "rejected_ids": [9]},
        {"prompt_ids": [10], "chosen_ids": [11], "rejected_ids": [12]},  # one prompt token: nothing to score
    ]
    plain, scored = pack_pairs(rows, None), pack_pairs(rows, None, score_prompts=True)
    n = len(plain.segment)
    assert torch.equal(scored.predictor_index[:n], plain.predictor_index)
    assert scored.predictor_index[n:].tolist() == [0, 1] and scored.target_ids[n:].tolist() == [6, 7]
    assert scored.segment[n:].tolist() == [4, 4] and (plain.num_segments, scored.num_segments) == (4, 6)


# ---------------------------------------------------------------------------- the forward-only passes' own head
# score_packed stacks rows up to a token budget and runs the LM head itself on scored positions, in chunks:
# each faster path against the plain computation, the model's own forward one packed row at a time.

ROWS = [  # of different lengths, so that stacked rows carry padding
    {"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [12, 13]},
    {"prompt_ids": [20, 21], "chosen_ids": [22], "rejected_ids": [23, 24, 25, 26]},
    {"prompt_ids": [30], "chosen_ids": [31, 32, 33, 34, 35, 36], "rejected_ids": [37]},
]


def _stacked_and_alone(model, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment sums of ``rows`` stacked into one forward through the own head, and each row through the
    model's own forward alone (the training step's computation)."""
    packed = stack_rows([pack_pairs([row], None) for row in rows]).to(TEST_DEVICE)
    with torch.inference_mode():
        stacked = torch.zeros(packed.num_segments, device=TEST_DEVICE)
        stacked = stacked.index_add(0, packed.segment, scored_token_logps(model, packed))
        alone = torch.cat([segment_logps(model, pack_pairs([row], None).to(TEST_DEVICE)) for row in rows])
    return stacked, alone


def test_every_own_head_model_type_is_tested() -> None:
    assert sorted(OWN_HEAD_FAMILIES.values()) == sorted(OWN_HEAD_MODEL_TYPES)


@pytest.mark.parametrize(  # Gemma 2's attention soft-cap has no SDPA kernel: eager alone
    ("family", "attention"),
    [(family, attention) for family in OWN_HEAD_FAMILIES for attention in ("sdpa", "eager") if family != "gemma2"]
    + [("gemma2", "eager")],
)
def test_stacked_rows_and_the_own_head_give_the_models_own_logps(family: str, attention: str, monkeypatch) -> None:
    """Padding, the position scheme, Gemma's soft-cap: stacked rows through the own head, 2 positions a head
    chunk, give what the model's own forward gives each row alone. ``DPO_RECIPE_TEST_DEVICE=cuda`` runs it
    on a GPU."""
    model = _small_model(family).to(TEST_DEVICE).eval()
    model.set_attn_implementation(attention)
    assert model.config.model_type == OWN_HEAD_FAMILIES[family] and packing.computes_own_head(model)
    monkeypatch.setattr(packing, "HEAD_CHUNK_LOGITS", 2 * 300)  # several chunks, the last one short
    stacked, alone = _stacked_and_alone(model, ROWS)
    assert torch.allclose(stacked, alone, rtol=1e-5, atol=0), (stacked - alone).abs().max()


def test_the_own_head_in_chunks_on_a_262k_vocabulary(monkeypatch) -> None:
    """Gemma 3's vocabulary size, 64 scored positions a head chunk (half the default, to keep the test
    light), so a long row takes several chunks."""
    model = _small_model("gemma3", vocab_size=262_144).eval()
    rows = [{"prompt_ids": [5, 6], "chosen_ids": list(range(100, 170)), "rejected_ids": list(range(200, 230))}]
    assert packing.HEAD_CHUNK_LOGITS // 262_144 == 128
    monkeypatch.setattr(packing, "HEAD_CHUNK_LOGITS", 64 * 262_144)
    stacked, alone = _stacked_and_alone(model, rows + ROWS)
    assert torch.allclose(stacked, alone, rtol=1e-5, atol=0), (stacked - alone).abs().max()


class _Calls:
    """Counts forward calls of a module."""

    def __init__(self, module) -> None:
        self.count = 0
        module.register_forward_hook(self._counted)

    def _counted(self, *_) -> None:
        self.count += 1


@pytest.mark.parametrize("budget", [1, 21, 10_000])
def test_token_budget_batching_gives_per_pair_scores(lora_model, budget: int) -> None:
    """Rows stacked up to the budget (one a forward, two, all five) give what scoring each pair alone gives."""
    lora_model.eval()
    decoder = _Calls(lora_model.get_base_model().get_decoder())
    scores = score_packed(lora_model, PAIRS, None, batch_size=1, policy=True, reference=False, token_budget=budget)
    assert decoder.count == {1: 5, 21: 3, 10_000: 1}[budget]  # rows of 11 | 10, 7 | 5, 4 tokens at 21
    assert torch.allclose(torch.stack(scores.policy, dim=1), _alone(lora_model, None), rtol=1e-5, atol=0)


def test_without_a_budget_or_an_own_head_each_row_goes_through_the_models_forward(lora_model, monkeypatch) -> None:
    """``token_budget`` None (the reference pass in half precision) and a model type whose head is not known
    to be plain both take the training step's path: the model's forward, one packed row at a time."""
    lora_model.eval()
    expected = _alone(lora_model, None)
    forwards = _Calls(lora_model.get_base_model())
    unbudgeted = score_packed(lora_model, PAIRS, None, batch_size=2, policy=True, reference=False, token_budget=None)
    assert forwards.count == 3  # 5 pairs, 2 a row
    monkeypatch.setattr(packing, "OWN_HEAD_MODEL_TYPES", ())
    assert not packing.computes_own_head(lora_model)
    unknown = score_packed(lora_model, PAIRS, None, batch_size=1, policy=True, reference=False)
    assert forwards.count == 3 + 5
    for scores in (unbudgeted, unknown):
        assert torch.allclose(torch.stack(scores.policy, dim=1), expected, rtol=1e-5, atol=0)


def test_stack_rows_refuses_prompt_segments() -> None:
    with pytest.raises(ValueError, match="completion scoring only"):
        stack_rows([pack_pairs(ROWS[:1], None, score_prompts=True)])
