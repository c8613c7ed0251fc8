"""Dataset and model cards rendered from the templates in ``cards/`` with huggingface_hub's card API.

The model card's hyper-parameter table is the objective's recipe → TRL config table (``trl_args``,
``training.objectives``), so it lists exactly what the trainer received, under the recipe's names and TRL's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from dpo_recipe.config.schema import Recipe
from dpo_recipe.data.generator import HARD_NEGATIVE_TYPES
from dpo_recipe.data.sources import is_hub_id, source_entries
from dpo_recipe.data.tokens import length_percentiles
from dpo_recipe.evaluation.report import markdown_summary
from dpo_recipe.training.objectives import objective_for
from dpo_recipe.training.step_evaluation import early_stopping_sentence
from dpo_recipe.training.trl_args import mapped_lora
from dpo_recipe.utils.files import packaged_dir

ADAPTER_PLACEHOLDER = "./path/to/adapter"  # replaced by the repo id when the adapter is pushed


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def render_dataset_card(
    splits: dict[str, list[dict[str, Any]]],
    *,
    num_pairs: int,
    seed: int,
    tokenizer: Any = None,
    tokenizer_name: str = "",
    license: str = "apache-2.0",
) -> DatasetCard:
    rows = [r for split in splits.values() for r in split]
    data = DatasetCardData(
        language=["ja"],
        license=license,
        task_categories=["text-generation"],
        size_categories=[_size_category(len(rows))],
        pretty_name="Japanese DPO preference pairs (AI / programming / data science)",
        tags=["dpo", "preference", "synthetic", "japanese"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"{name}/*.arrow"} for name in splits],
            }
        ],
    )
    rejection_rows = []
    for kind, count in sorted(Counter(r["rejection_type"] for r in rows).items()):
        pairs = [r for r in rows if r["rejection_type"] == kind]
        ratio = sum(len(r["rejected"]) / len(r["chosen"]) for r in pairs) / len(pairs)
        rejection_rows.append({"type": kind, "hard": kind in HARD_NEGATIVE_TYPES, "pairs": count, "ratio": ratio})
    if tokenizer is not None:

        def measure(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        length_note = f"Token counts with the `{tokenizer_name}` tokenizer."
    else:

        def measure(text: str) -> int:
            return len(text)

        length_note = "Character counts (no tokenizer was given to `dpo-recipe data generate`)."
    fields = {
        "prompt": [measure(r["prompt"]) for r in rows],
        "chosen": [measure(r["chosen"]) for r in rows],
        "rejected": [measure(r["rejected"]) for r in rows],
    }
    fields["prompt + chosen"] = [p + c for p, c in zip(fields["prompt"], fields["chosen"], strict=True)]
    return DatasetCard.from_template(
        data,
        template_path=str(packaged_dir("cards") / "dataset_card.md"),
        num_pairs=num_pairs,
        seed=seed,
        split_rows=[{"split": n, "pairs": len(s), "topics": len({r["topic"] for r in s})} for n, s in splits.items()],
        domain_counts=dict(sorted(Counter(r["domain"] for r in rows).items())),
        rejection_rows=rejection_rows,
        length_note=length_note,
        length_rows=[{"field": name, **length_percentiles(values)} for name, values in fields.items()],
    )


def _eval_results(recipe: Recipe, overall: dict[str, Any] | None) -> list[EvalResult]:
    """Held-out figures as ``model-index`` entries; the dataset is named with its pinned commit."""
    if not overall:
        return []
    d = recipe.data
    dataset = {
        "dataset_type": d.source if is_hub_id(d.source) else "local",
        "dataset_name": f"{d.source} (held-out topics)",
        "dataset_split": d.test_split,
        "dataset_revision": d.revision,
    }
    objective = objective_for(recipe)
    return [
        EvalResult(
            task_type="text-generation",
            task_name=objective.title,
            metric_type=metric,
            metric_name=name,
            metric_value=round(float(value), 4),
            **dataset,
        )
        for metric, name, value in objective.card_figures(overall)
        if value is not None  # a KTO held-out split of one label has no margin
    ]


def _card_data(model_name: str, base_model: str, **fields: Any) -> ModelCardData:
    """What every card of a model made from ``base_model`` states; ``base_model`` only when it is a Hub id,
    the only kind the Hub accepts there."""
    return ModelCardData(
        model_name=model_name,
        base_model=base_model if is_hub_id(base_model) else None,
        pipeline_tag="text-generation",
        language=["ja"],
        **fields,
    )


def _from_template(template: str, data: ModelCardData, **variables: Any) -> ModelCard:
    return ModelCard.from_template(data, template_path=str(packaged_dir("cards") / template), **variables)


def render_model_card(
    recipe: Recipe,
    metrics: dict[str, Any],
    *,
    recipe_name: str,
    command: str,
    plots: list[str],
    adapter_ref: str = ADAPTER_PLACEHOLDER,
) -> ModelCard:
    """The adapter's README.md; ``model-index`` carries the held-out reward accuracy and margin."""
    model_name = Path(recipe.training.output_dir).name
    base_model = recipe.model.name_or_path
    held_out = metrics.get("eval", {})
    objective = objective_for(recipe)
    data = _card_data(
        model_name,
        base_model,
        library_name="peft",
        license=recipe.hub.license,
        tags=["trl", objective.name, "lora", "dpo-recipe"],
        datasets=[e["source"] for e in source_entries(recipe.data) if is_hub_id(e["source"])] or None,
        eval_results=_eval_results(recipe, held_out.get("overall")) or None,
    )
    lora = recipe.lora
    hyperparameters = [  # (recipe key, what the trainer received it as, value)
        *objective.hyperparameters(recipe),
        ("training.precision", "bf16 / fp16", recipe.training.precision),
        *((key, f"LoraConfig {field}", value if value != [] else "none") for key, field, value in mapped_lora(recipe)),
        ("lora.token_learning_rate", "their optimizer group's lr", lora.token_learning_rate or "as training"),
        (f"training {objective.unit}", "train_dataset", metrics.get("train", {}).get(objective.unit)),
    ]
    summary = (
        markdown_summary(held_out, objective.report_lines(held_out))
        if held_out.get("overall")
        else "No held-out evaluation was run."
    )
    return _from_template(
        "model_card.md",
        data,
        model_name=model_name,
        base_model=base_model,
        adapter_ref=adapter_ref,
        recipe_name=recipe_name,
        eval_summary=summary,
        plots=plots,
        hyperparameters=hyperparameters,
        versions=sorted(metrics.get("versions", {}).items()),
        command=command,
        recipe_yaml=recipe.to_yaml(),
        trust_remote_code=recipe.model.trust_remote_code,
        data_sources=metrics.get("data", {}).get("sources") or source_entries(recipe.data),
        mixture=bool(recipe.data.sources),
        objective_intro=objective.card_intro,
        objective_intro_ja=objective.card_intro_ja,
        held_out_explained=objective.held_out_explained,
        init_adapter=recipe.model.init_adapter,
        train_init_adapter=recipe.lora.train_init_adapter,
        init_adapter_reference=recipe.lora.init_adapter_reference,
        objective_note=objective.card_note(recipe, metrics),
        training_note=_training_note(metrics.get("train", {})),
        chain=metrics.get("chain", []) if len(metrics.get("chain", [])) > 1 else [],
        watch_note=_watch_note(metrics, objective.unit),
    )


def _training_note(train: dict[str, Any]) -> str:
    """``48 steps, mean training loss 0.6917, 223 s of training.``; a resumed run says it was resumed and
    that the figures are the whole run's (``training.run_totals``)."""
    if train.get("loss") is None or "runtime_s" not in train:
        return ""
    figures, parts = f"{train['steps']} steps, mean training loss {train['loss']:.4f}", train.get("runtime_parts_s")
    if not parts:
        return f"{figures}, {train['runtime_s']:.0f} s of training."
    resumed = ", ".join(str(step) for step in train["resumed_at_steps"])
    return (
        f"{figures} over the whole run, {train['runtime_s']:.0f} s of training in {len(parts)} parts "
        f"(resumed at step {resumed})."
    )


def _watch_note(metrics: dict[str, Any], unit: str) -> str:
    """The held-out evaluation during training (``eval.steps``) and where early stopping took the adapter from."""
    watched, stopping = metrics.get("eval_steps"), metrics.get("train", {}).get("early_stopping")
    sentences = []
    if watched:
        sentences.append(
            f"Held-out {unit} ({watched['pairs']}) were scored every {watched['every']} steps during training "
            f"({len(watched['points'])} points: the held-out line of the training curves)."
        )
    if stopping:
        sentences.append(early_stopping_sentence(stopping))
    return " ".join(sentences)


EXPORT_PLACEHOLDER = "./path/to/export"  # replaced by the repo id when the export is pushed


def render_export_card(manifest: dict[str, Any], model_name: str) -> ModelCard:
    """An exported model's README.md (``export.json``'s facts): how to run it, and the read-back check.

    A merged model is a ``merge`` of its base; a GGUF of one is listed by the Hub as ``quantized``.
    """
    base_model = manifest["base_model"]
    on_hub = is_hub_id(base_model)
    gguf = manifest["format"] == "gguf"
    data = _card_data(
        model_name,
        base_model,
        base_model_relation=("quantized" if gguf else "merge") if on_hub else None,
        library_name="gguf" if gguf else "transformers",
        license=manifest["license"],
        tags=["dpo", "dpo-recipe", "gguf" if gguf else "merged"],
    )
    base_link = f"[{base_model}](https://huggingface.co/{base_model})" if on_hub else f"`{base_model}`"
    return _from_template(
        "export_card.md",
        data,
        model_name=model_name,
        base_link=base_link,
        repo_ref=EXPORT_PLACEHOLDER,
        **{key: manifest[key] for key in ("format", "adapter", "tensor_type", "as_conversation", "files")},
        check=manifest["logit_check"],
    )
