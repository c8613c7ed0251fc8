"""``implicit``: the tuned model's own DPO reward, beta x (log pi(y|x) - log pi_ref(y|x)), length-corrected.

The policy is the adapter the answers were sampled from; the reference is the one it trained against (the base
with the adapter off, or, for an adapter trained further from a start it kept frozen, that start loaded as the
``ref`` adapter), so a reward here is the reward training optimised. Answers are scored two at a time as packed
pairs by ``packing.score_packed``, the pass training's reference and the held-out report run, tokenized as TRL
tokenizes them (``tokens.encode_pair``); the reference's log-probs come from the base cache when an earlier run
scored the same answers.

The implicit reward grows with length (a longer answer gathers more log-ratio), so iterating on it makes answers
longer each round. DICE (Chen et al. 2024) subtracts alpha x |y| and fits alpha so that the chosen and rejected
answers of the pairs it makes are of equal length on average; ``fit_length_penalty`` does that for
best-versus-worst pairs (alpha = 0 when the chosen are not longer), and ``summary`` reports alpha and the mean
token lengths.
"""

from __future__ import annotations

from typing import Any

from dpo_recipe.config.schema import JudgeSection
from dpo_recipe.judges.base import ScoringJudge, Verdict


def fit_length_penalty(groups: list[list[tuple[float, int]]]) -> float:
    """The alpha >= 0 that makes ``mean(len(best) - len(worst))`` closest to 0, each group's best and worst answer
    ranked by ``reward - alpha x tokens`` (a group whose answers all score alike makes no pair and counts not);
    0 when the gap is <= 0 uncorrected.

    ``groups``: (reward, tokens) of each answer, one list per prompt. The ranking within a group changes only
    where two answers' penalised rewards cross, at alpha = (r_i - r_j) / (t_i - t_j), so the gap is constant
    between those points: one alpha inside each interval (the midpoint, or past the last) tries them all."""
    import numpy as np

    arrays = [(np.array([r for r, _ in g], dtype=float), np.array([t for _, t in g], dtype=float)) for g in groups]
    crossings = {
        float((r[i] - r[j]) / (t[i] - t[j]))
        for r, t in arrays
        for i in range(len(r))
        for j in range(i + 1, len(r))
        if t[i] != t[j] and (r[i] - r[j]) / (t[i] - t[j]) > 0
    }
    points = sorted(crossings)
    candidates = np.array(
        [0.0, *((a + b) / 2 for a, b in zip(points, points[1:], strict=False)), *([points[-1] * 2] if points else [])]
    )
    total, counted = np.zeros(len(candidates)), np.zeros(len(candidates))
    for r, t in arrays:
        scored = r[None, :] - candidates[:, None] * t[None, :]
        best, worst = scored.argmax(1), scored.argmin(1)
        apart = scored.max(1) > scored.min(1)
        total += np.where(apart, t[best] - t[worst], 0.0)
        counted += apart
    gaps = np.divide(total, counted, out=np.zeros_like(total), where=counted > 0)
    if gaps[0] <= 0:
        return 0.0
    return float(candidates[int(np.argmin(np.abs(gaps)))])  # the first (smallest alpha) of the closest


class ImplicitJudge(ScoringJudge):
    """``model``: a PEFT model whose active adapter is the policy (``packing.reference_adapter`` its reference)."""

    def __init__(
        self, model: Any, tokenizer: Any, *, beta: float, max_length: int, settings: JudgeSection, cache: Any = None
    ) -> None:
        self.spec = "implicit"
        self.model, self.tokenizer, self.beta, self.max_length = model, tokenizer, beta, max_length
        self.settings, self.cache = settings, cache
        self.adapter: str | None = None  # the adapter scored with, as the report names it
        self.summary: dict[str, Any] = {}

    def rewards(self, prompts: list[Any], completions: list[str]) -> tuple[list[float], list[int]]:
        """beta x (policy - reference) summed log-prob of each completion, and its token count (TRL's, EOS included,
        after ``max_length`` truncation)."""
        from dpo_recipe.data.tokens import encode_pair
        from dpo_recipe.training.base_cache import BaseCache
        from dpo_recipe.training.packing import SCORING_TOKENS, score_packed, truncated

        cache = self.cache or BaseCache(None)
        couples, i = [], 0  # two answers to the same prompt a packed pair; an odd one out is paired with itself
        while i < len(completions):
            j = i + 1 if i + 1 < len(completions) and prompts[i + 1] == prompts[i] else i
            couples.append((i, j))
            i = j + 1
        rows = [
            {
                "prompt": prompts[a],
                "chosen": _as_answer(prompts[a], completions[a]),
                "rejected": _as_answer(prompts[a], completions[b]),
            }
            for a, b in couples
        ]
        pairs = [vars(encode_pair(self.tokenizer, row)) for row in rows]
        inputs = [truncated(p, self.max_length) for p in pairs]
        key = cache.key(self.model, inputs, rows=self.settings.batch_size, tokens=SCORING_TOKENS)
        reference = cache.read_logps(key, len(pairs))
        scores = score_packed(
            self.model,
            pairs,
            self.max_length,
            self.settings.batch_size,
            policy=True,
            reference=reference is None,
            progress_desc="Implicit reward",
        )
        if reference is None:
            reference = scores.reference
            cache.write_logps(key, reference)
        rewards, tokens = [0.0] * len(completions), [0] * len(completions)
        for j, ((a, b), pair) in enumerate(zip(couples, pairs, strict=True)):
            _, chosen, rejected = truncated(pair, self.max_length)
            for side, index, ids in ((0, a, chosen), (1, b, rejected)):
                ratio = float(scores.policy[side][j]) - float(reference[side][j])
                rewards[index], tokens[index] = self.beta * ratio, len(ids)
        return rewards, tokens

    def verdicts(self, prompts: list[Any], completions: list[str], columns: dict[str, list[Any]]) -> list[Verdict]:
        rewards, tokens = self.rewards(prompts, completions)
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(repr(prompt), []).append(i)
        alpha = 0.0
        if self.settings.length_correction:
            alpha = fit_length_penalty([[(rewards[i], tokens[i]) for i in group] for group in groups.values()])
        self.summary = {"adapter": self.adapter, "beta": self.beta, "length_penalty_alpha": alpha}
        return [
            Verdict(
                round(reward - alpha * length, 6),
                f"beta x log-ratio {reward:+.4f}, {length} tokens" + (f", less {alpha:.3g} a token" if alpha else ""),
            )
            for reward, length in zip(rewards, tokens, strict=True)
        ]


def _as_answer(prompt: Any, completion: str) -> Any:
    """A completion in its prompt's form, as TRL's conversational rows hold one: after chat messages, an assistant
    turn (rendered through the chat template, its turn end included), after text, the text."""
    return [{"role": "assistant", "content": completion}] if isinstance(prompt, list) else completion


def load_implicit_judge(adapter: str, settings: JudgeSection) -> ImplicitJudge:
    """The judge of an adapter directory (or Hub id) a training run wrote, on its recorded base. An adapter trained
    further from a start it kept as its reference (``lora.train_init_adapter`` with ``init_adapter_reference``
    start) gets that start loaded as the ``ref`` adapter, as training had it."""
    from dpo_recipe.models.adapters import adapter_base, init_adapter_dir, load_adapter_model
    from dpo_recipe.training.base_cache import default_cache

    adapter_dir, recipe, model_section = adapter_base(adapter)
    model, tokenizer = load_adapter_model(adapter_dir, model_section)
    if recipe.lora.train_init_adapter and recipe.lora.init_adapter_reference == "start":
        model.load_adapter(str(init_adapter_dir(str(recipe.model.init_adapter))), adapter_name="ref")
        model.set_adapter("default")
    judge = ImplicitJudge(
        model,
        tokenizer,
        beta=recipe.training.beta,
        max_length=recipe.training.max_length,
        settings=settings,
        cache=default_cache(),
    )
    judge.adapter = str(adapter_dir)
    return judge
