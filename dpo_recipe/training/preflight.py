"""The dry run: what training would see, measured in seconds before any weights load.

A tokenizer can spend more than one token per character on text it was not trained on (Japanese
on an English-centred vocabulary), so a max_length that looks generous in characters can silently
cut most answers before their EOS. This report counts the real tokens to make that visible and
refuses pairs whose prompt alone fills max_length (TRL would drop them without a word).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dpo_recipe.config.schema import Recipe
from dpo_recipe.data.tokens import RenderedPair, encode_pair, length_percentiles, render_pair, render_text, row_tools
from dpo_recipe.errors import DataError, RecipeError
from dpo_recipe.models.loading import (
    check_lora_targets,
    linear_module_names,
    load_tokenizer,
    skeleton_model,
    trainable_token_ids,
)


@dataclass
class TokenReport:
    pairs: int
    prompt_lengths: list[int] = field(default_factory=list)
    completion_lengths: list[int] = field(default_factory=list)  # chosen and rejected, EOS included
    truncated_pairs: int = 0
    emptied_pairs: list[int] = field(default_factory=list)  # 1-based rows whose prompt fills max_length
    not_prefix_pairs: int = 0
    double_bos_pairs: int = 0
    missing_eos_pairs: int = 0
    template_not_prefix_rows: list[int] = field(default_factory=list)  # 1-based rows; see tokens.render_pair
    first_pair: RenderedPair | None = None  # printed, so a reader sees what the chat template made of the data


def percentiles(values: list[int]) -> str:
    """Token lengths as the dry run prints them, ``p50 N / p95 N / max N``: what a reader picks max_length by."""
    return " / ".join(f"{name} {value}" for name, value in length_percentiles(values).items())


def measure_tokens(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> TokenReport:
    """Tokenize every pair the way TRL does: prompt, then prompt + completion + EOS."""
    report = TokenReport(pairs=len(rows))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for number, row in enumerate(rows, start=1):
        pair = encode_pair(tokenizer, row)
        report.prompt_lengths.append(len(pair.prompt_ids))
        report.completion_lengths += [len(pair.chosen_ids), len(pair.rejected_ids)]
        longest = len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))
        report.truncated_pairs += longest > max_length
        report.not_prefix_pairs += not pair.prompt_is_prefix
        full = pair.prompt_ids + pair.chosen_ids
        report.double_bos_pairs += bos is not None and full[:2] == [bos, bos]
        report.missing_eos_pairs += eos not in pair.chosen_ids
        if len(pair.prompt_ids) >= max_length:
            report.emptied_pairs.append(number)
        rendered = render_pair(tokenizer, row)
        report.first_pair = report.first_pair or rendered
        if not rendered.prompt_is_prefix:
            report.template_not_prefix_rows.append(number)
    return report


def refuse_emptied_completions(report: TokenReport, max_length: int, unit: str = "pairs", order: str = "") -> None:
    """Refuse, with the numbers, training ``unit`` (pairs, or KTO's rows) whose prompt alone fills ``max_length``;
    ``order`` says where the row numbers count from when it is not the file's order."""
    if report.emptied_pairs:
        rows = ", ".join(str(r) for r in report.emptied_pairs[:8])
        longest = max(report.prompt_lengths)
        raise DataError(
            f"training.max_length {max_length} leaves no room for the answer in {len(report.emptied_pairs)} of "
            f"{report.pairs} training {unit} (rows {rows}{order}): their prompts alone are {max_length}+ tokens "
            f"(longest {longest}). Raise training.max_length to at least {longest + 32} or shorten those prompts."
        )


def refuse_tools_the_template_ignores(rows: list[dict[str, Any]], tokenizer: Any, recipe: Recipe) -> None:
    """Rows with tool definitions (OpenAI's ``input.tools``, kept as a ``tools`` column) train only where the chat
    template renders them: TRL passes them to it, and a template without tool support drops them silently, which
    would train answers that call tools the prompt never showed. Checked on the first such row: rendering its
    prompt with and without its tools must differ."""
    with_tools = [n for n, row in enumerate(rows, 1) if row_tools(row)]
    if not with_tools:
        return
    row = rows[with_tools[0] - 1]
    plain = render_text(tokenizer, row["prompt"], generation_prompt=True)
    if render_text(tokenizer, row["prompt"], generation_prompt=True, tools=row_tools(row)) != plain:
        return
    template = recipe.model.chat_template or f"{recipe.model.name_or_path}'s own"
    source = recipe.data.source if not recipe.data.sources else "data.sources"
    raise DataError(
        f"{source}: {len(with_tools)} rows carry tool definitions (a tools column, e.g. OpenAI input.tools), but "
        f"the chat template ({template}) does not render tools, so their answers would be "
        "trained without the tools they call. Use a model (or model.chat_template) whose template renders a tools "
        "argument, or drop the tools from those rows (or the rows) to train on the rest."
    )


def checked_architecture(recipe: Recipe) -> tuple[Any, Any]:
    """``(tokenizer, skeleton)``: the tokenizer and the model without weights, once LoRA's target modules and
    ``lora.trainable_tokens`` are found in them and ``model.init_adapter`` fits them, so a misspelt module or token
    or an adapter of another base costs seconds, not a weights load."""
    from dpo_recipe.models.adapters import check_init_adapter

    tokenizer = load_tokenizer(recipe.model)
    skeleton = skeleton_model(recipe.model)
    check_init_adapter(recipe, skeleton)
    check_lora_targets(recipe.lora.target_modules, skeleton)
    trainable_token_ids(recipe.lora.trainable_tokens, tokenizer)
    refuse_what_cannot_fit(skeleton, recipe)
    return tokenizer, skeleton


# The estimate is a rough bound, so only settings far past the machine are refused: a typo (lora.r 1e6, a batch
# of 1e5) rather than a run that might just fit.
OVERSIZE_FACTOR = 2


def refuse_what_cannot_fit(skeleton: Any, recipe: Recipe) -> None:
    """Refuse, before any weights load, settings whose memory estimate is far past this machine's memory,
    naming the keys behind the largest part of the estimate."""
    from dpo_recipe.models.hardware import machine_memory_mb

    _, trainable = lora_summary(skeleton, recipe)
    parts = memory_estimate_parts(skeleton, recipe, trainable, recipe.training.max_length)
    available, where = machine_memory_mb()
    total = sum(parts.values())
    if total <= OVERSIZE_FACTOR * available:
        return
    keys = {
        "weights": "model.dtype or a smaller model.name_or_path",
        "LoRA": "lora.r or lora.target_modules",
        "activations": "training.per_device_batch_size or training.max_length (or turn on "
        "training.activation_checkpointing)",
    }
    largest = max(parts, key=parts.__getitem__)
    shown = ", ".join(f"{name} {mb:,.0f} MB" for name, mb in parts.items())
    raise RecipeError(
        f"These settings need about {total:,.0f} MB per process ({shown}), more than {OVERSIZE_FACTOR}x the "
        f"{available:,.0f} MB of {where}. Lower {keys[largest]}. Nothing was loaded."
    )


def lora_summary(skeleton: Any, recipe: Recipe) -> tuple[Counter, int]:
    """Matched module names with counts, and the exact number of trainable LoRA parameters."""
    import torch
    from transformers.pytorch_utils import Conv1D

    targets = recipe.lora.target_modules
    all_linear = targets == "all-linear"
    names = set(linear_module_names(skeleton)) if all_linear else set(targets)
    matched: Counter = Counter()
    trainable = 0
    for name, module in skeleton.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in names or not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        if isinstance(module, Conv1D):
            fan_in, fan_out = module.weight.shape
        else:
            fan_out, fan_in = module.weight.shape
        matched[leaf] += 1
        trainable += recipe.lora.r * (fan_in + fan_out)
    return matched, trainable


def memory_estimate_mb(skeleton: Any, recipe: Recipe, trainable: int, seq_len: int) -> float:
    """Weights + LoRA weights/grads/Adam state + activations of one micro-batch (a rough bound)."""
    return sum(memory_estimate_parts(skeleton, recipe, trainable, seq_len).values())


def memory_estimate_parts(skeleton: Any, recipe: Recipe, trainable: int, seq_len: int) -> dict[str, float]:
    """``memory_estimate_mb`` in its parts (MB): weights, LoRA (weights, grads, Adam state), activations."""
    import torch

    config = skeleton.config
    params = sum(p.numel() for p in skeleton.parameters())
    weight_bytes = params * torch.finfo(getattr(torch, recipe.model.dtype)).bits // 8
    lora_bytes = trainable * (4 + 4 + 8)
    hidden = getattr(config, "hidden_size", getattr(config, "n_embd", 768))
    layers = getattr(config, "num_hidden_layers", getattr(config, "n_layer", 12))
    sequences = 2 * recipe.training.per_device_batch_size  # chosen + rejected
    per_token_layer = 34 * hidden * 4  # activations kept for backward, fp32 (Korthikanti et al. rule of thumb)
    if recipe.training.activation_checkpointing:
        per_token_layer = hidden * 4 * 2
    activation_bytes = sequences * seq_len * layers * per_token_layer
    return {"weights": weight_bytes / 2**20, "LoRA": lora_bytes / 2**20, "activations": activation_bytes / 2**20}


def _shown(text: str, limit: int = 300) -> str:
    """A rendered string with its newlines and markers visible, its middle cut when long."""
    return repr(text) if len(text) <= limit else f"{text[: limit // 2]!r} ... {text[-limit // 2 :]!r}"


def dry_run_report(
    recipe: Recipe, report: TokenReport, skeleton: Any, lint_warnings: int, data_notes: list[str] = ()
) -> str:
    matched, trainable = lora_summary(skeleton, recipe)
    total_params = sum(p.numel() for p in skeleton.parameters())
    memory_mb = memory_estimate_mb(skeleton, recipe, trainable, recipe.training.max_length)
    modules = ", ".join(f"{name} x{count}" for name, count in sorted(matched.items()))
    not_prefix = report.template_not_prefix_rows
    where = f" (rows {', '.join(map(str, not_prefix[:8]))}: the template renders the prompt differently)"
    lines = [
        *data_notes,
        f"pairs kept: {report.pairs} (lint warnings: {lint_warnings})",
        f"prompt tokens: {percentiles(report.prompt_lengths)}",
        f"completion tokens (chosen and rejected, EOS included): {percentiles(report.completion_lengths)}",
        f"pairs truncated at max_length {recipe.training.max_length}: {report.truncated_pairs} of {report.pairs}",
        f"pairs whose whole completion would be cut: {len(report.emptied_pairs)}",
        f"prompt not a token prefix of prompt+answer (TRL cuts the prompt tail): {report.not_prefix_pairs}",
        f"chat template round trip: double BOS {report.double_bos_pairs}, missing EOS {report.missing_eos_pairs}, "
        f"rendered prompt not a prefix of prompt + answer {len(not_prefix)}{where if not_prefix else ''}",
        f"LoRA target modules found: {modules}",
        f"trainable parameters: {trainable:,} of {total_params:,} ({100 * trainable / max(1, total_params):.2f}%)",
        f"memory estimate per process: {memory_mb:,.0f} MB",
    ]
    if report.first_pair:
        pair = report.first_pair
        lines.append("the first training pair as the model reads it:")
        lines += [f"  {name}: {_shown(getattr(pair, name))}" for name in ("prompt", "chosen", "rejected")]
    return "\n".join(lines)
