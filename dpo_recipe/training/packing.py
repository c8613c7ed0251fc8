"""Prefix-shared packing: a preference pair as one sequence, its prompt computed once.

TRL feeds ``prompt + chosen`` and ``prompt + rejected`` as two rows padded to the longest in the
batch, and on CPU projects every position (prompt and padding included) through the
vocabulary-sized LM head. Here each pair becomes ``prompt | chosen | rejected`` in one row: the rejected tokens
restart their position ids where the prompt ends and attend to the prompt and to themselves,
never to ``chosen`` (a block attention mask; "prefix sharing", Wang et al. 2024). Several pairs
go into one row side by side, each blind to the others. Only the positions that predict a
completion token go through the LM head. The log-probabilities are those of TRL's two padded
rows (the equivalence test in tests/test_packing.py holds them to 1e-5), with fewer tokens.

``score_packed`` is the one forward-only scoring loop over many pairs: the trainer's reference pass
and the held-out evaluation both run it, so both score pairs packed as training packs them. It
stacks packed rows into one forward up to a token budget (``SCORING_TOKENS``), longest first, under
``torch.inference_mode``, and runs the LM head itself on the scored positions only, in chunks
(``scored_token_logps``): a 262k-word head over a few hundred positions is most of a forward's work
and, all at once, a gigabyte of logits.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")  # TRL's tokenized pair, as pack_pairs reads it
# tokens a forward-only pass takes at once: packed rows x the longest of them. Rows go longest first, so
# stacked rows are of about one length and padding stays small; a row longer than the budget goes alone
SCORING_TOKENS = 4096
# logits held at once where the LM head runs in chunks of scored positions (their log-softmax overwrites
# them): 2**25 floats (128 MiB), 128 positions of Gemma 3's 262,144-word vocabulary. Each chunk reads the
# whole 640 x 262,144 head: on a 2-core CPU a position took 4.3 ms in chunks of 64, 3.8 in chunks of 128,
# 3.4 in chunks of 256 and 2.8 in chunks of 1,024; but with glibc's freed memory kept in the heap
# (``dpo-recipe eval``) chunks of 256 raised the peak RSS of scoring 32 Gemma pairs by 500-750 MB, 128 by 30-50
HEAD_CHUNK_LOGITS = 2**25
# model types whose causal-LM forward is nothing but the LM head on the decoder's last hidden state (Gemma 2
# and 3: then a final-logit soft-cap, which scored_token_logps applies): the forward-only passes run that head
# themselves, on scored positions only. Each is checked against the model's own forward in
# tests/training/test_packing.py; any other model is scored one packed row a forward, through its forward.
OWN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma2", "gemma3_text")


@dataclass
class PackedPairs:
    """One row holding several pairs (B = 1, what a training step takes), or B such rows stacked for a
    forward-only pass (``stack_rows``)."""

    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, 1, L, L) bool: True where a query may attend to a key
    predictor_index: torch.Tensor  # (N,) positions (in the flattened B x L) whose next-token distribution is scored
    target_ids: torch.Tensor  # (N,) the token each of those positions must predict
    segment: torch.Tensor  # (N,) 2 * pair + (0 chosen, 1 rejected): which log-prob sum a token joins
    num_pairs: int
    # prompt tokens (after each prompt's first) scored too, as segment 2 * num_pairs + pair: ORPO's NLL
    scores_prompts: bool = False

    @property
    def num_segments(self) -> int:
        return self.num_pairs * (3 if self.scores_prompts else 2)

    def to(self, device: torch.device | str) -> PackedPairs:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return PackedPairs(**moved)


def truncated(example: dict[str, list[int]], max_length: int | None) -> tuple[list[int], list[int], list[int]]:
    """TRL's keep_start truncation of ``prompt + completion`` to max_length, applied to both completions."""
    prompt = example["prompt_ids"]
    room = None if max_length is None else max(0, max_length - len(prompt))
    return prompt[:max_length], example["chosen_ids"][:room], example["rejected_ids"][:room]


def pack_pairs(
    examples: list[dict[str, list[int]]], max_length: int | None, score_prompts: bool = False
) -> PackedPairs:
    """Pack tokenized pairs (TRL's ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``) into one row.

    ``score_prompts`` also scores each prompt's tokens after its first (segment ``2 * pairs + pair``,
    after every completion token), for an NLL over prompt and answer as TRL's ORPOTrainer takes it.

    Two pairs, ``prompt | chosen | rejected`` each, side by side:

    >>> packed = pack_pairs(
    ...     [
    ...         {"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9]},
    ...         {"prompt_ids": [10], "chosen_ids": [11], "rejected_ids": [12, 13]},
    ...     ],
    ...     max_length=None,
    ... )
    >>> packed.input_ids.tolist()
    [[5, 6, 7, 8, 9, 10, 11, 12, 13]]

    A rejected answer's positions restart where its prompt ends, as if chosen were not there:

    >>> packed.position_ids.tolist()
    [[0, 1, 2, 3, 2, 0, 1, 1, 2]]

    Only completion tokens are scored, each by the position before it (the prompt's last token
    predicts both answers' first tokens); the segment id says which sum a token joins,
    ``2 * pair + (0 chosen, 1 rejected)``:

    >>> packed.predictor_index.tolist(), packed.target_ids.tolist(), packed.segment.tolist()
    ([1, 2, 1, 5, 5, 7], [7, 8, 9, 11, 12, 13], [0, 0, 1, 2, 3, 3])

    The first pair's rejected token (index 4) attends to its prompt and itself, never to chosen
    or to the other pair:

    >>> packed.attention_mask[0, 0, 4].int().tolist()
    [1, 1, 0, 0, 1, 0, 0, 0, 0]
    """
    ids: list[int] = []
    positions: list[int] = []
    blocks: list[tuple[int, int, int, int]] = []  # (prompt start, prompt len, chosen len, rejected len)
    predictors: list[int] = []
    targets: list[int] = []
    segments: list[int] = []
    for pair, example in enumerate(examples):
        prompt, chosen, rejected = truncated(example, max_length)
        start, p = len(ids), len(prompt)
        ids += prompt + chosen + rejected
        positions += list(range(p)) + list(range(p, p + len(chosen))) + list(range(p, p + len(rejected)))
        blocks.append((start, p, len(chosen), len(rejected)))
        for side, completion in enumerate((chosen, rejected)):
            first = start + p + (len(chosen) if side else 0)
            # token j of a completion is predicted by the token before it: the prompt's last for j == 0
            predictors += [start + p - 1] + list(range(first, first + len(completion) - 1))
            targets += completion
            segments += [2 * pair + side] * len(completion)
    if score_prompts:  # token j >= 1 of a prompt is predicted by token j - 1
        for pair, (start, p, _, _) in enumerate(blocks):
            predictors += list(range(start, start + p - 1))
            targets += ids[start + 1 : start + p]
            segments += [2 * len(examples) + pair] * max(p - 1, 0)
    length = len(ids)
    mask = torch.zeros(length, length, dtype=torch.bool)
    for start, p, c, r in blocks:
        end_prompt, end_chosen, end = start + p, start + p + c, start + p + c + r
        causal = torch.ones(end - start, end - start, dtype=torch.bool).tril()
        mask[start:end, start:end] = causal
        mask[end_chosen:end, end_prompt:end_chosen] = False  # rejected never sees chosen
    return PackedPairs(
        input_ids=torch.tensor([ids]),
        position_ids=torch.tensor([positions]),
        attention_mask=mask[None, None],
        predictor_index=torch.tensor(predictors),
        target_ids=torch.tensor(targets),
        segment=torch.tensor(segments),
        num_pairs=len(examples),
        scores_prompts=score_prompts,
    )


BLOCK_MASK_ATTENTION = ("sdpa", "eager")  # the implementations that take a 4D mask as given


def attention_implementation(model: Any) -> str:
    """The attention kernel of ``model``, seen through DDP / FSDP / PEFT wrappers."""
    from accelerate.utils import extract_model_from_parallel

    config = getattr(extract_model_from_parallel(model), "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa"


def block_mask_for(attention: str, mask: torch.Tensor) -> torch.Tensor:
    """SDPA takes the boolean mask; eager attention adds the mask to its scores, so it gets 0 / -max."""
    if attention == "sdpa":
        return mask
    if attention == "eager":
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    raise ValueError(
        f"Packed pairs need an attention implementation that takes a block mask ({' or '.join(BLOCK_MASK_ATTENTION)}); "
        f"this model uses {attention!r}. Load it with attn_implementation='sdpa'."
    )


def pair_logps(model: Any, packed: PackedPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (chosen, rejected), one per pair, through ``model``'s own forward."""
    sums = segment_logps(model, packed)
    pairs = 2 * packed.num_pairs
    return sums[0:pairs:2], sums[1:pairs:2]


def segment_logps(model: Any, packed: PackedPairs) -> torch.Tensor:
    """Summed log-probs of each segment, shape (``packed.num_segments``,): chosen 0, rejected 0, chosen 1, ...,
    then, with ``scores_prompts``, each pair's prompt.

    The call goes through the model's (and any DDP / PEFT wrapper's) ``forward``; ``logits_to_keep``
    with an index tensor makes transformers project only the predicting positions through the head.
    """
    output = model(
        input_ids=packed.input_ids,
        attention_mask=block_mask_for(attention_implementation(model), packed.attention_mask),
        position_ids=packed.position_ids,
        logits_to_keep=packed.predictor_index,
        use_cache=False,
    )
    logits = output.logits[0].float()
    token_logps = logits.log_softmax(-1).gather(1, packed.target_ids[:, None]).squeeze(1)
    sums = torch.zeros(packed.num_segments, dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, packed.segment, token_logps)


@dataclass
class PackedScores:
    """Per-pair summed completion log-probs ``(chosen, rejected)``, in the order the pairs were given.

    Each side holds two CPU float32 tensors of shape (N,), or is None when it was not asked for.
    """

    policy: tuple[torch.Tensor, torch.Tensor] | None
    reference: tuple[torch.Tensor, torch.Tensor] | None


def longest_first(pairs: list[dict[str, Any]]) -> list[int]:
    """Indices of ``pairs`` by total token count, longest first: packs of neighbours are even in length."""
    return sorted(range(len(pairs)), key=lambda i: -sum(len(pairs[i][column]) for column in PAIR_COLUMNS))


def reference_adapter(model: Any) -> AbstractContextManager:
    """A context in which ``model`` is the DPO reference, as TRL's DPOTrainer defines it.

    That is the base with the adapter off, or the frozen ``"ref"`` copy of an adapter that is
    being trained further.
    """
    from trl.trainer.utils import use_adapter

    return use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)


def stack_rows(rows: list[PackedPairs]) -> PackedPairs:
    """Packed rows as one batch of B rows for a forward-only pass, padded to the longest.

    A padding position attends to itself alone and is never scored: some kernels (torch's SDPA math
    path before 2.5) give NaN for a query that sees nothing, and a NaN value would reach every query
    through the attention matmul, even at weight 0. Pair numbers run on across rows, so the segments
    are those of the rows' pairs in order.

    >>> a = pack_pairs([{"prompt_ids": [5, 6], "chosen_ids": [7], "rejected_ids": [8]}], None)
    >>> b = pack_pairs([{"prompt_ids": [9], "chosen_ids": [10], "rejected_ids": [11]}], None)
    >>> both = stack_rows([a, b])
    >>> both.input_ids.tolist(), both.predictor_index.tolist(), both.segment.tolist()
    ([[5, 6, 7, 8], [9, 10, 11, 0]], [1, 1, 4, 4], [0, 1, 2, 3])
    >>> both.attention_mask[1, 0, 3].tolist()  # the padding position
    [False, False, False, True]
    """
    length = max(row.input_ids.shape[1] for row in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    position_ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.eye(length, dtype=torch.bool).repeat(len(rows), 1, 1, 1)
    predictors, segments, pairs = [], [], 0
    for b, row in enumerate(rows):
        if row.scores_prompts:
            raise ValueError("stack_rows stacks completion scoring only; prompt segments would be renumbered")
        n = row.input_ids.shape[1]
        input_ids[b, :n], position_ids[b, :n] = row.input_ids[0], row.position_ids[0]
        mask[b, 0, :n, :n] = row.attention_mask[0, 0]
        predictors.append(row.predictor_index + b * length)
        segments.append(row.segment + 2 * pairs)
        pairs += row.num_pairs
    return PackedPairs(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        predictor_index=torch.cat(predictors),
        target_ids=torch.cat([row.target_ids for row in rows]),
        segment=torch.cat(segments),
        num_pairs=pairs,
    )


def _causal_lm(model: Any) -> Any:
    """The transformers causal LM inside a PEFT wrapper (LoRA layers and trained token rows are in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def computes_own_head(model: Any) -> bool:
    """Whether ``scored_token_logps`` gives ``model``'s own numbers: its forward is the LM head on the last
    hidden state (``OWN_HEAD_MODEL_TYPES``) and it takes block masks."""
    config = getattr(_causal_lm(model), "config", None)
    return (
        getattr(config, "model_type", None) in OWN_HEAD_MODEL_TYPES
        and attention_implementation(model) in BLOCK_MASK_ATTENTION
    )


def scored_token_logps(model: Any, packed: PackedPairs) -> torch.Tensor:
    """The log-prob of each scored token (``packed.target_ids``), forward-only: the decoder runs on all
    positions, the LM head on the scored ones only, ``HEAD_CHUNK_LOGITS`` logits at a time.

    The head and log-softmax run outside any autocast, in the weights' dtype and then fp32 (all fp32 for an
    fp32 model, so under bf16 autocast only the decoder runs in bf16). The log-softmax is the one a training
    step takes (``segment_logps``): in fp32 a row scored alone gives the step's sums bit for bit (Gemma 3
    270M, the tiny Llama), and stacked rows moved a pair's sum by 5e-7 relative at most (32 Gemma pairs). Only for
    ``computes_own_head`` models: this is their forward, from the last hidden state on."""
    causal_lm = _causal_lm(model)
    hidden = causal_lm.get_decoder()(
        input_ids=packed.input_ids,
        attention_mask=block_mask_for(attention_implementation(model), packed.attention_mask),
        position_ids=packed.position_ids,
        use_cache=False,
    ).last_hidden_state
    hidden = hidden.flatten(0, 1)[packed.predictor_index]
    head, config = causal_lm.get_output_embeddings(), causal_lm.config.get_text_config()
    cap = getattr(config, "final_logit_softcapping", None)
    step = max(1, HEAD_CHUNK_LOGITS // config.vocab_size)
    logps = torch.empty(len(hidden), dtype=torch.float32, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, len(hidden), step):
            logits = head(hidden[start : start + step].to(causal_lm.dtype)).float()
            if cap is not None:  # the model's tanh(logits / cap) * cap, in place
                logits.div_(cap).tanh_().mul_(cap)
            torch.log_softmax(logits, -1, out=logits)  # in place too: one chunk of logits held, not two
            logps[start : start + step] = logits.gather(1, packed.target_ids[start : start + step, None]).squeeze(1)
            del logits  # before the next chunk's are made
    return logps


def token_batches(lengths: list[int], budget: int | None) -> list[list[int]]:
    """Consecutive rows (by index) grouped so that rows x the longest of them stays within ``budget``
    tokens; a row over the budget goes alone. ``budget`` None: one row a group.

    >>> token_batches([9, 8, 8, 5, 3], 24)
    [[0, 1], [2, 3, 4]]
    """
    groups: list[list[int]] = []
    longest = 0
    for i, length in enumerate(lengths):
        if groups and budget is not None and max(longest, length) * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(i)
            longest = max(longest, length)
        else:
            groups.append([i])
            longest = length
    return groups


def score_packed(
    model: Any,
    pairs: list[dict[str, Any]],
    max_length: int | None,
    batch_size: int,
    *,
    policy: bool,
    reference: bool,
    progress_desc: str | None = None,
    token_budget: int | None = SCORING_TOKENS,
) -> PackedScores:
    """Score tokenized ``pairs`` forward-only, ``batch_size`` pairs a packed row, longest first.

    Rows are stacked into one forward up to ``token_budget`` tokens and the LM head runs on scored
    positions only (``scored_token_logps``) where ``computes_own_head``; ``token_budget`` None (or
    another model) runs one row a forward through the model's own forward, exactly as a training
    step computes it: the trainer's reference pass in half precision needs that. ``policy`` scores
    the pairs under ``model`` as it is (adapter on); ``reference`` under the DPO reference
    (``reference_adapter``). ``model`` is a PEFT model; it runs in eval mode and gets its previous mode
    back. ``progress_desc`` labels a progress bar; None shows none. The caller sets precision
    (autocast) and splits pairs between processes.
    """
    from tqdm.auto import tqdm

    contexts: dict[str, Callable[[], AbstractContextManager]] = {}
    if policy:
        contexts["policy"] = nullcontext
    if reference:
        contexts["reference"] = lambda: reference_adapter(model)
    scores = {name: (torch.empty(len(pairs)), torch.empty(len(pairs))) for name in contexts}
    device = next(model.parameters()).device
    order = longest_first(pairs)
    rows = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    packed_rows = [pack_pairs([pairs[i] for i in row], max_length) for row in rows]
    own_head = token_budget is not None and computes_own_head(model)
    groups = token_batches([p.input_ids.shape[1] for p in packed_rows], token_budget if own_head else None)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), tqdm(total=len(pairs), desc=progress_desc, disable=progress_desc is None) as bar:
        for group in groups:
            packed = stack_rows([packed_rows[r] for r in group]) if own_head else packed_rows[group[0]]
            packed = packed.to(device)
            chunk = [i for r in group for i in rows[r]]
            for name, context in contexts.items():
                with context():
                    if own_head:
                        sums = torch.zeros(packed.num_segments, device=device)
                        sums = sums.index_add(0, packed.segment, scored_token_logps(model, packed))
                    else:
                        sums = segment_logps(model, packed)
                scores[name][0][chunk] = sums[0::2].cpu()
                scores[name][1][chunk] = sums[1::2].cpu()
            bar.update(len(chunk))
    model.train(was_training)
    return PackedScores(policy=scores.get("policy"), reference=scores.get("reference"))
