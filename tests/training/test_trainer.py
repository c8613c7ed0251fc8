"""PackedDPOTrainer optimises what TRL's DPOTrainer optimises (same loss, LoRA gradients and logs),
caches its reference log-probs, and is chosen only where it computes exactly what DPOTrainer would."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.data.sources import load_preference_splits
from dpo_recipe.errors import RecipeError
from dpo_recipe.models.loading import load_model, load_tokenizer
from dpo_recipe.training.base_cache import BaseCache
from dpo_recipe.training.losses import PAIRWISE_LOSSES
from dpo_recipe.training.objectives.dpo import DPO
from dpo_recipe.training.packing import PackedPairs, segment_logps, truncated
from dpo_recipe.training.trainer import (
    REF_COLUMNS,
    PackedDPOTrainer,
    check_packable,
    packing_limitation,
    supports_packing,
    unpackable_settings,
)


@pytest.fixture(scope="module")
def setup(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    from datasets import Dataset

    recipe = load_recipe("tiny-ja", tiny_overrides(tiny_model, "training.max_length=48"))
    rows, _, _ = load_preference_splits(dataclasses.replace(recipe.data, max_train_pairs=None))  # in file order
    tokenizer = load_tokenizer(recipe.model)
    pairs = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[:12]])
    args = DPO().trainer_args(recipe, tmp_path_factory.mktemp("packing"))
    return load_model(recipe.model), tokenizer, pairs, args


def _trainers(
    setup,
    cache: Path | None,
    lora: dict | None = None,
    packed_only: bool = False,
    packed: dict | None = None,
    **settings,
):
    """TRL's trainer and ours on copies of one model, each adding a fresh LoRA adapter as in training.

    The B matrices are then set to the same random values in both, so the policy differs from the
    reference (the base with the adapter off) and the loss is not just ln 2.
    """
    from peft import LoraConfig
    from trl import DPOTrainer

    model, tokenizer, pairs, args = setup
    args = copy.deepcopy(args)
    for name, value in settings.items():
        setattr(args, name, value)
    trainers = []
    classes = [(DPOTrainer, {}), (PackedDPOTrainer, {"base_cache": BaseCache(cache), **(packed or {})})]
    for trainer_class, extra in classes[1:] if packed_only else classes:
        trainer = trainer_class(
            model=copy.deepcopy(model),
            args=args,
            train_dataset=pairs,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"], **(lora or {})),
            **extra,
        )
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in sorted(trainer.model.named_parameters()):
                if "lora_" in name or "trainable_tokens_delta" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        trainers.append(trainer)
    return trainers


def _loss_and_grads(trainer, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, trainer._prepare_inputs(batch))  # on the trainer's device (a GPU in gpu_check)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


# label_smoothing for the losses that read it (exo_pair needs it > 0, robust is DPO at 0)
SMOOTHED = {"exo_pair", "robust", "aot", "aot_unpaired"}
LOSS_CASES = {
    "dpo": {"loss_type": ["sigmoid"]},
    "rpo": {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
    **{
        name: {"loss_type": [name], **({"label_smoothing": 0.1} if name in SMOOTHED else {})}
        for name in PAIRWISE_LOSSES
        if name != "sigmoid"
    },
    "discopop-tau": {"loss_type": ["discopop"], "discopop_tau": 0.5},
    "ipo+sft+hinge": {"loss_type": ["ipo", "sft", "hinge"], "loss_weights": [0.5, 0.2, 1.0]},
}


@pytest.mark.parametrize("losses", LOSS_CASES.values(), ids=LOSS_CASES.keys())
def test_loss_and_lora_gradients_match_trl(setup, tmp_path: Path, losses: dict) -> None:
    """Every loss of the table on four pairs: ipo and sigmoid_norm divide by each answer's own token count,
    aot and aot_unpaired sort across the batch."""
    plain, packed = _trainers(setup, tmp_path / "cache", **losses)
    assert supports_packing(setup[0], packed.args)
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


def test_trainable_token_rows_train_on_the_packed_path_and_stay_off_in_the_reference(setup, tmp_path: Path) -> None:
    """lora.trainable_tokens (PEFT trainable_token_indices): the packed forward reads the trained rows
    (its log-probs equal a plain forward of each sequence), gradients reach them, and with the
    adapter off (the reference, the held-out "base") the rows are the base's.

    TRL 1.16's own DPOTrainer cannot be the yardstick here: its fused LM head reads ``lm_head.bias``,
    which PEFT's wrapper of a tied LM head does not have, so training with plain DPOTrainer fails."""
    from dpo_recipe.training.packing import pair_logps

    model, tokenizer, pairs, _ = setup
    tokens = tokenizer(pairs[0]["chosen"], add_special_tokens=False)["input_ids"][:2]  # rows the batch reads
    _, packed = _trainers(setup, tmp_path / "cache", lora={"trainable_token_indices": tokens})
    rows = [packed.train_dataset[i] for i in range(4)]
    loss, grads = _loss_and_grads(packed, packed.data_collator(rows))
    token_grads = [name for name in grads if "trainable_tokens_delta" in name]
    assert token_grads and all(grads[name].abs().max() > 0 for name in token_grads)

    policy = packed.model.eval()
    batch = packed.data_collator(rows)
    batch.pop("ref_chosen_logps"), batch.pop("ref_rejected_logps")
    with torch.no_grad():
        chosen, _ = pair_logps(policy, PackedPairs(**batch))
        for i, row in enumerate(rows):  # one plain forward over prompt + chosen, no packing, no index
            prompt, answer, _ = truncated(row, packed.args.max_length)
            ids = torch.tensor([prompt + answer])
            logps = policy(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
            assert chosen[i].item() == pytest.approx(logps[len(prompt) - 1 :].sum().item(), rel=1e-5)
    base_rows = model.get_input_embeddings().weight[tokens]
    assert not torch.equal(packed.model.get_input_embeddings()(torch.tensor(tokens)), base_rows)
    with packed.model.disable_adapter():
        assert torch.equal(packed.model.get_input_embeddings()(torch.tensor(tokens)), base_rows)


REFERENCE_FREE_CASES = {
    "simpo": {"loss_type": ["simpo"], "beta": 2.0, "label_smoothing": 0.1, "packed": {"simpo_gamma": 0.8}},
    "cpo-simpo": {"loss_type": ["simpo"], "beta": 2.0, "packed": {"simpo_gamma": 0.5, "cpo_alpha": 0.3}},
    "orpo": {"loss_type": ["orpo"], "beta": 0.2},
}


def _plain_forward(policy, row: dict, max_length: int) -> dict[str, torch.Tensor]:
    """One unpacked forward of prompt + answer per answer: each answer's token log-probs, and the whole
    row's logits and ids (for TRL's NLL)."""
    prompt, chosen, rejected = truncated(row, max_length)
    out = {}
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        ids = torch.tensor([prompt + answer])
        logits = policy(input_ids=ids).logits[0]
        out[side] = logits[:-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0][len(prompt) - 1 :]
        out[f"{side}_logits"], out[f"{side}_ids"], out["prompt_length"] = logits, ids[0], len(prompt)
    return out


@pytest.mark.parametrize("case", REFERENCE_FREE_CASES.values(), ids=REFERENCE_FREE_CASES.keys())
def test_reference_free_losses_equal_trls_own_loss_functions_on_the_packed_forward(
    setup, tmp_path: Path, case: dict
) -> None:
    """SimPO and ORPO, which DPOTrainer cannot run: TRL's ``CPOTrainer.cpo_loss`` / ``ORPOTrainer.odds_ratio_loss``
    (called with a stand-in ``self``) on the mean log-probs our packed forward produced, plus the NLL as
    CPOTrainer (chosen answer) / ORPOTrainer (prompt and chosen answer) take it; the mean log-probs equal
    those of a plain forward of each sequence, and the logged rewards are TRL's (beta x mean log-prob)."""
    from types import SimpleNamespace

    import torch.nn.functional as F
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    case = copy.deepcopy(case)
    extra = case.pop("packed", {})
    (trainer,) = _trainers(setup, tmp_path / "cache", packed_only=True, packed=extra, **case)
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    assert "ref_chosen_logps" not in batch and batch["scores_prompts"] == (case["loss_type"] == ["orpo"])
    loss, grads = _loss_and_grads(trainer, trainer.data_collator(rows))
    assert len(grads) == 8 and all(grad.abs().max() > 0 for grad in grads.values())

    policy, max_length = trainer.model.eval(), trainer.args.max_length
    with torch.no_grad():
        sums = segment_logps(policy, PackedPairs(**batch))
        tokens = torch.bincount(batch["segment"], minlength=3 * 4)
        chosen_mean, rejected_mean = sums[0:8:2] / tokens[0:8:2], sums[1:8:2] / tokens[1:8:2]
        plain = [_plain_forward(policy, row, max_length) for row in rows]
    assert torch.allclose(chosen_mean, torch.stack([p["chosen"].mean() for p in plain]), rtol=1e-5)
    assert torch.allclose(rejected_mean, torch.stack([p["rejected"].mean() for p in plain]), rtol=1e-5)

    beta, device = trainer.args.beta, SimpleNamespace(device="cpu")
    if case["loss_type"] == ["simpo"]:
        stand_in = SimpleNamespace(
            beta=beta,
            label_smoothing=trainer.args.label_smoothing,
            simpo_gamma=extra["simpo_gamma"],
            loss_type="simpo",
            alpha=0.0,  # AlphaPO off: CPOConfig's default
            accelerator=device,
        )
        losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(stand_in, chosen_mean, rejected_mean)
        # CPO's nn.CrossEntropyLoss over the chosen rows, prompt labels -100: a mean over every answer token
        logits = torch.cat([p["chosen_logits"][p["prompt_length"] - 1 : -1] for p in plain])
        nll = F.cross_entropy(logits, torch.cat([p["chosen_ids"][p["prompt_length"] :] for p in plain]))
        expected = losses.mean() + extra.get("cpo_alpha", 0.0) * nll
        if "cpo_alpha" in extra:
            assert trainer._metrics["train"]["nll_loss"][-1] == pytest.approx(nll.item(), rel=1e-5)
        else:
            assert "nll_loss" not in trainer._metrics["train"]
    else:
        stand_in = SimpleNamespace(beta=beta, accelerator=device)
        losses, chosen_rewards, rejected_rewards, _, _ = ORPOTrainer.odds_ratio_loss(
            stand_in, chosen_mean, rejected_mean
        )
        # ORPO's NLL: the chosen rows' whole sequence, prompt included, every token after the first
        logits = torch.cat([p["chosen_logits"][:-1] for p in plain])
        nll = F.cross_entropy(logits, torch.cat([p["chosen_ids"][1:] for p in plain]))
        expected = nll - losses.mean()
        assert trainer._metrics["train"]["nll_loss"][-1] == pytest.approx(nll.item(), rel=1e-5)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    metrics = trainer._metrics["train"]
    assert metrics["rewards/chosen"][-1] == pytest.approx(chosen_rewards.mean().item(), rel=1e-5)
    assert metrics["rewards/rejected"][-1] == pytest.approx(rejected_rewards.mean().item(), rel=1e-5)
    accuracy = (chosen_rewards > rejected_rewards).float().mean().item()
    assert metrics["rewards/accuracies"][-1] == accuracy
    assert metrics["logps/chosen"][-1] == pytest.approx(sums[0:8:2].mean().item(), rel=1e-5)  # sums, as for DPO


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_a_reference_free_trainer_runs_no_reference_pass_and_writes_no_cache(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss_type: str
) -> None:
    def no_reference(*args: object) -> None:
        raise AssertionError("a reference pass ran")

    monkeypatch.setattr(PackedDPOTrainer, "_compute_reference", no_reference)
    cache = tmp_path / "cache"
    (trainer,) = _trainers(setup, cache, packed_only=True, loss_type=[loss_type])
    assert trainer.reference_free
    assert not cache.exists() or not list(cache.rglob("*"))
    assert not set(REF_COLUMNS) & set(trainer.train_dataset.column_names)


def test_build_trainer_never_falls_back_to_dpo_trainer_for_a_reference_free_loss(setup, tmp_path: Path) -> None:
    model, tokenizer, pairs, args = setup
    rows = [dict(r) for r in pairs.select(range(4))]
    recipe = load_recipe("tiny-ja", ["model.name_or_path=unused", "training.loss_type=orpo"])
    orpo_args = copy.deepcopy(args)
    orpo_args.loss_type = ["orpo"]
    eager_only = copy.deepcopy(model)
    eager_only.config._attn_implementation = "flash_attention_2"
    with pytest.raises(RecipeError, match=r"\['orpo'\]: trains on the packed path only, and attention"):
        DPO().build_trainer(recipe, orpo_args, eager_only, tokenizer, rows, tmp_path)
    with pytest.raises(ValueError, match="orpo is reference-free .* and trains alone"):
        _trainers(setup, None, packed_only=True, loss_type=["sigmoid", "orpo"])


def test_reference_logps_are_cached_and_reused(setup, tmp_path: Path) -> None:
    from peft import LoraConfig

    cache = tmp_path / "cache"
    plain, packed = _trainers(setup, cache)
    files = list(cache.glob("reference_logps/*.safetensors"))
    assert len(files) == 1
    # the reference TRL computes on the fly (adapter off) equals the precomputed one
    batch = plain._prepare_inputs(plain.data_collator([plain.train_dataset[i] for i in range(12)]))
    with torch.no_grad():
        trl_ref = [logps.cpu() for logps in plain.compute_ref_log_probs(plain.model, batch)]
    assert torch.allclose(torch.tensor(packed.train_dataset["ref_chosen_logps"]), trl_ref[0], rtol=1e-5)
    assert torch.allclose(torch.tensor(packed.train_dataset["ref_rejected_logps"]), trl_ref[1], rtol=1e-5)
    # a second trainer reads the file instead of running the reference pass
    stamp = files[0].stat().st_mtime_ns
    _, again = _trainers(setup, cache)
    assert files[0].stat().st_mtime_ns == stamp and list(cache.glob("reference_logps/*.safetensors")) == files
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
        base_cache=BaseCache(cache),
    )
    assert len(list(cache.glob("reference_logps/*.safetensors"))) == 2


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state, mixed precision included: a bf16 trainer needs it fresh,
    and the fp32 trainers of the other tests need it fresh again afterwards."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.parametrize(("reference_rows", "exact"), [(None, True), (4, False)])
def test_in_bf16_the_reference_pass_packs_rows_as_the_steps_do(
    setup, fresh_accelerator_state, reference_rows, exact: bool
) -> None:
    """Under bf16 autocast a row's length changes the rounding: with the reference packed one pair a row,
    as the steps are, the fresh adapter's first loss is ln 2 to the bit; four pairs a row move it."""
    import dataclasses
    import math

    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    model, tokenizer, pairs, args = setup
    config = copy.deepcopy(model.config)
    config.hidden_size, config.intermediate_size = 256, 512  # wide enough for rounding to depend on the row
    torch.manual_seed(0)
    wider = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    bf16 = dataclasses.replace(args, bf16=True, per_device_train_batch_size=1, precompute_ref_batch_size=reference_rows)
    trainer = PackedDPOTrainer(
        model=wider,
        args=bf16,
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),  # B = 0: the policy is the base
    )
    assert trainer.accelerator.mixed_precision == "bf16"
    losses = []
    for i in range(4):
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i]]))
        with torch.no_grad(), trainer.accelerator.autocast():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert all(loss == pytest.approx(math.log(2), abs=1e-7) for loss in losses) is exact, losses


def test_supports_packing_on_the_recipe_defaults(setup) -> None:
    model, _, _, args = setup
    assert model.config._attn_implementation == "sdpa"
    assert supports_packing(model, args)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("loss_type", ["kto"], "loss_type 'kto'"),
        ("loss_type", ["sigmoid", "cpo"], "loss_type 'cpo'"),
        ("ld_alpha", 0.5, "ld_alpha"),
        ("use_weighting", True, "use_weighting"),
        ("f_divergence_type", "js_divergence", "f_divergence_type 'js_divergence'"),
        ("sync_ref_model", True, "sync_ref_model"),
    ],
)
def test_an_objective_the_packed_step_does_not_compute_is_refused_by_name(
    setup, setting: str, value: object, named: str
) -> None:
    model, _, _, args = setup
    changed = copy.deepcopy(args)
    setattr(changed, setting, value)
    found = unpackable_settings(changed)
    assert len(found) == 1 and named in found[0]
    assert not supports_packing(model, changed)
    with pytest.raises(RecipeError) as err:
        check_packable(changed)
    assert named in str(err.value) and "Set training.packing: false" in str(err.value)
    check_packable(args)  # the recipe defaults pack


@pytest.mark.parametrize(("attention", "packed"), [("eager", True), ("sdpa", True), ("flash_attention_2", False)])
def test_packing_needs_attention_that_takes_a_block_mask(setup, attention: str, packed: bool) -> None:
    model, _, _, args = setup
    other = copy.deepcopy(model)
    other.config._attn_implementation = attention
    assert supports_packing(other, args) is packed
    assert (packing_limitation(other) is None) is packed
    if not packed:
        assert "'flash_attention_2' takes no block mask" in packing_limitation(other)


def test_a_sliding_window_shorter_than_max_length_falls_back_to_trl() -> None:
    """Inside the window the packed row is exact (tests/test_packing.py); past it the block mask would let
    a token see too far back, so such runs train with plain DPOTrainer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    shape = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    model = Gemma3ForCausalLM(Gemma3TextConfig(**shape, num_attention_heads=4, head_dim=16, sliding_window=64))
    assert packing_limitation(model, 64) is None
    assert "sliding-window attention (64 tokens) is not applied" in packing_limitation(model, 65)
    assert "set training.max_length <= 64" in packing_limitation(model, None)


def test_a_forward_without_logits_to_keep_falls_back_to_trl(setup) -> None:
    class NoLogitsToKeep(torch.nn.Module):
        config = setup[0].config

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            return input_ids

    assert not supports_packing(NoLogitsToKeep(), setup[3])
    assert packing_limitation(NoLogitsToKeep()) == "NoLogitsToKeep.forward takes no logits_to_keep"


def test_build_trainer_refuses_an_unpackable_objective_and_says_why_it_falls_back(
    setup, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from trl import DPOTrainer

    model, tokenizer, pairs, args = setup
    recipe = load_recipe("tiny-ja", ["model.name_or_path=unused"])
    rows = [dict(r) for r in pairs.select(range(4))]
    weighted = copy.deepcopy(args)
    weighted.use_weighting = True
    with pytest.raises(RecipeError, match="use_weighting .*Set training.packing: false"):
        DPO().build_trainer(recipe, weighted, copy.deepcopy(model), tokenizer, rows, tmp_path)
    eager_only = copy.deepcopy(model)
    eager_only.config._attn_implementation = "flash_attention_2"
    trainer = DPO().build_trainer(recipe, args, eager_only, tokenizer, rows, tmp_path)
    assert type(trainer) is DPOTrainer
    assert capsys.readouterr().out.count("training with plain DPOTrainer") == 1


def test_build_trainer_refuses_trainable_tokens_where_trl_cannot_train_them(setup, tmp_path: Path) -> None:
    model, tokenizer, pairs, args = setup
    rows = [dict(r) for r in pairs.select(range(4))]
    token = "<|im_end|>"  # the tiny tokenizer's turn end, one token
    unpacked = load_recipe("tiny-ja", ["model.name_or_path=unused", "training.packing=false"])
    unpacked.lora.trainable_tokens = [token]
    assert model.config.tie_word_embeddings
    with pytest.raises(RecipeError, match="lora.trainable_tokens: on a model with tied embeddings.*packing: true"):
        DPO().build_trainer(unpacked, args, copy.deepcopy(model), tokenizer, rows, tmp_path)
    packed = load_recipe("tiny-ja", ["model.name_or_path=unused"])
    packed.lora.trainable_tokens = [token]
    trainer = DPO().build_trainer(packed, args, copy.deepcopy(model), tokenizer, rows, tmp_path)
    assert type(trainer) is PackedDPOTrainer
    assert any("trainable_tokens_delta" in name for name, p in trainer.model.named_parameters() if p.requires_grad)


def test_trained_token_rows_get_their_own_learning_rate(setup, tmp_path: Path) -> None:
    model, tokenizer, pairs, args = setup
    rows = [dict(r) for r in pairs.select(range(4))]
    recipe = load_recipe("tiny-ja", ["model.name_or_path=unused", "lora.token_learning_rate=0.003"])
    recipe.lora.trainable_tokens = ["<|im_end|>"]
    trainer = DPO().build_trainer(recipe, args, copy.deepcopy(model), tokenizer, rows, tmp_path)
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    rows_group = trainer.optimizer.param_groups[-1]
    named = {id(p): n for n, p in trainer.model.named_parameters()}
    assert rows_group["lr"] == pytest.approx(0.003) and rows_group["weight_decay"] == 0.0
    assert [named[id(p)].rsplit(".", 2)[-2:] for p in rows_group["params"]] == [["trainable_tokens_delta", "default"]]
    others = [named[id(p)] for group in trainer.optimizer.param_groups[:-1] for p in group["params"]]
    assert others and all("lora_" in name for name in others)  # every LoRA matrix, once, at the recipe's rate
    assert {g["lr"] for g in trainer.optimizer.param_groups[:-1]} == {args.learning_rate}
    before = trainer.optimizer.param_groups[-1]["lr"]
    trainer.lr_scheduler.step()  # the linear schedule scales both rates alike
    ratio = trainer.optimizer.param_groups[-1]["lr"] / before
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(args.learning_rate * ratio)
