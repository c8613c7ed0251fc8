"""Keys whose values each pass but say nothing together (a loss mix, a mixture entry, hub.push without a
repo id, a DPO key under objective kto): checked after coercion, before any data or model is touched.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from dpo_recipe.config.coercion import build_section
from dpo_recipe.config.schema import DataSection, Recipe, TrainingSection
from dpo_recipe.config.vocabulary import (
    CHAT_ROLES,
    EARLY_STOPPING_KEYS,
    EARLY_STOPPING_METRICS,
    GATES,
    KTO_LOSS_NAMES,
    LOSS_NAMES,
    NOT_READ_BY,
    PER_SOURCE_KEYS,
    REPORT_TO,
    RULE_WEIGHTS,
    SOURCE_KEYS,
    is_reference_free,
    mixing_problem,
    split_judge_spec,
    suggest,
)


def cross_checks(recipe: Recipe) -> list[str]:
    problems = []
    if not recipe.model.name_or_path and not recipe.model.gguf_file:
        problems.append("model.name_or_path: required (a Hub id or a local directory)")
    targets = recipe.lora.target_modules
    if isinstance(targets, list) and not targets:
        problems.append("lora.target_modules: expected at least one module name or 'all-linear'")
    elif isinstance(targets, str) and targets != "all-linear":
        try:  # PEFT reads a string as a regular expression of whole module names
            re.compile(targets)
        except re.error as exc:
            problems.append(
                f"lora.target_modules: {targets!r} is read as a regular expression of module names, and it is not "
                f"one ({exc}); give a list of names, e.g. [q_proj, v_proj], or all-linear"
            )
    if not recipe.data.test_split:
        problems.append("data.test_split: the eval split name must not be empty")
    problems.extend(data_problems(recipe.data))
    t = recipe.training
    if t.objective == "kto":  # TRL's KTOTrainer: its own keys and limits
        problems.extend(kto_problems(recipe))
    elif t.objective == "sft":  # TRL's SFTTrainer: no preference loss
        problems.extend(sft_problems(recipe))
    else:
        losses = [t.loss_type] if isinstance(t.loss_type, str) else t.loss_type
        problems.extend(loss_problems(losses, t.label_smoothing, t.packing))
        weights = t.loss_weights
        if weights is not None and len(weights) != len(losses):
            problems.append(
                f"training.loss_weights: {len(weights)} weights for {len(losses)} loss types; give one per loss_type "
                "entry"
            )
    problems.extend(watch_problems(recipe))
    problems.extend(tracker_problems(recipe.training))
    if recipe.lora.train_init_adapter and not recipe.model.init_adapter:
        problems.append("lora.train_init_adapter: true trains model.init_adapter further; set model.init_adapter too")
    if recipe.lora.init_adapter_reference == "base" and not recipe.lora.train_init_adapter:
        problems.append(
            "lora.init_adapter_reference: base is the reference of an init adapter trained further; set "
            "lora.train_init_adapter: true too (a new adapter on a merged init adapter has that merged model as its "
            "reference)"
        )
    elif recipe.lora.init_adapter_reference == "base" and recipe.training.objective != "dpo":
        problems.append(
            f"lora.init_adapter_reference: base is a DPO reference; objective {recipe.training.objective} does not "
            "read it: remove the key"
        )
    problems.extend(judge_problems(recipe))
    if recipe.hub.push and not recipe.hub.repo_id:
        problems.append("hub.repo_id: required when hub.push is true (USER/NAME)")
    return problems


def judge_problems(recipe: Recipe) -> list[str]:
    """The judge's keys that each pass but cannot work: an unknown judge (``judge.kind``, ``eval.judge``), gate or
    rule name, rule weights that score nothing (all 0) or overflow, an empty length range, a prompt template that
    does not format with {prompt}, {response0} and {response1}, a key variable's odd name, held-out answers judged
    where none are written."""
    judge, problems = recipe.judge, []
    try:
        split_judge_spec(judge.kind)
    except ValueError as exc:
        problems.append(f"judge.kind: {exc}")
    if recipe.eval.judge is not None:
        try:
            split_judge_spec(recipe.eval.judge)
        except ValueError as exc:
            problems.append(f"eval.judge: {exc}")
        if recipe.eval.num_generations == 0:
            problems.append(
                "eval.judge: judges the held-out answers of base and tuned model, and eval.num_generations is 0 (no "
                "question is answered); set eval.num_generations to 1 or more, or remove eval.judge"
            )
    problems += [
        f"judge.gates: unknown gate {name!r}; known: {', '.join(GATES)}{suggest(name, GATES)}"
        for name in judge.gates
        if name not in GATES
    ]
    for name, weight in judge.rules.items():
        if name not in RULE_WEIGHTS:
            problems.append(
                f"judge.rules: unknown check {name!r}; known: {', '.join(RULE_WEIGHTS)}{suggest(name, RULE_WEIGHTS)}"
            )
        elif weight < 0:
            problems.append(f"judge.rules.{name}: a weight must be >= 0, got {weight}")
    total = sum(judge.rules.values())
    if not math.isfinite(total):  # each check is in [0, 1]: a finite sum keeps every score finite
        problems.append(f"judge.rules: the weights add up to more than a number holds ({total}); keep them small")
    elif not any(weight > 0 for weight in judge.rules.values()):
        problems.append(
            "judge.rules: no weight above 0, so the rules judge scores every answer alike: every prompt ties (no "
            "pair) and iterate's win rate says nothing; give at least one check a weight, e.g. {repetition: 1}"
        )
    if judge.min_chars >= judge.max_chars:
        problems.append(f"judge.min_chars ({judge.min_chars}) must be below judge.max_chars ({judge.max_chars})")
    marks = {"prompt": "\x00P", "response0": "\x00A", "response1": "\x00B"}
    try:
        filled = judge.prompt_template.format(**marks)
        missing = [f"{{{name}}}" for name, mark in marks.items() if mark not in filled]
        if missing:
            problems.append(f"judge.prompt_template: has no {' or '.join(missing)}; the judge would not see it")
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(
            f"judge.prompt_template: does not format ({type(exc).__name__}: {exc}); use {{prompt}}, {{response0}} and "
            "{response1}, and double every other brace ({{ }})"
        )
    env = judge.api_key_env
    if env is not None and not (env and env.replace("_", "a").isalnum() and not env[0].isdigit()):
        problems.append(f"judge.api_key_env: {env!r} is not an environment variable name (e.g. OPENAI_API_KEY)")
    return problems


def tracker_problems(training: TrainingSection) -> list[str]:
    """``training.report_to``: known tracker names, and ``none`` alone (not beside a tracker or tensorboard: true)."""
    names = [training.report_to] if isinstance(training.report_to, str) else training.report_to
    problems = [
        f"training.report_to: unknown tracker {name!r}; known: {', '.join(REPORT_TO)}{suggest(name, REPORT_TO)}"
        for name in names
        if name not in REPORT_TO
    ]
    if "none" in names and (len(names) > 1 or training.tensorboard):
        also = "training.tensorboard: true" if training.tensorboard else ", ".join(n for n in names if n != "none")
        problems.append(f"training.report_to: none contradicts {also}; keep one")
    return problems


def watch_problems(recipe: Recipe) -> list[str]:
    """The keys of the held-out evaluation during training: ``eval.subset`` and ``training.early_stopping`` read
    what ``eval.steps`` measures, and early stopping needs a patience and a metric it knows."""
    problems = []
    stopping = recipe.training.early_stopping
    if recipe.eval.steps is None:
        if recipe.eval.subset is not None:
            problems.append("eval.subset: the pairs eval.steps scores during training; set eval.steps or remove it")
        if stopping is not None:
            problems.append(
                "training.early_stopping: stops on the held-out numbers eval.steps measures; set eval.steps too "
                "(e.g. eval.steps: 10)"
            )
    if stopping is None:
        return problems
    known = ", ".join(EARLY_STOPPING_KEYS)
    problems += [
        f"training.early_stopping.{key}: unknown key (known: {known}){suggest(key, EARLY_STOPPING_KEYS)}"
        for key in stopping
        if key not in EARLY_STOPPING_KEYS
    ]
    patience = stopping.get("patience")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        problems.append(
            f"training.early_stopping.patience: expected an integer >= 1 (evaluations without improvement before "
            f"training stops), got {patience!r}"
        )
    metric = stopping.get("metric", "loss")
    if metric not in EARLY_STOPPING_METRICS:
        problems.append(
            f"training.early_stopping.metric: expected one of {', '.join(EARLY_STOPPING_METRICS)}, got {metric!r}"
            f"{suggest(str(metric), EARLY_STOPPING_METRICS)}"
        )
    return problems


def data_problems(data: DataSection) -> list[str]:
    """Data keys whose values each pass but say nothing together: a role mapped onto no chat role, a mixture
    entry without a source or with both a weight and a fraction. Checked here, before any file is read."""
    problems = [
        f"data.roles: {name!r} is mapped to {role!r}; map each name to one of {', '.join(CHAT_ROLES)}"
        for name, role in data.roles.items()
        if role not in CHAT_ROLES
    ]
    weighted = [("weight" in entry) for entry in data.sources]
    if any(weighted) and not all(weighted):
        problems.append("data.sources: give every source a weight, or none (then they are concatenated)")
    weights = [entry.get("weight") for entry in data.sources]
    if all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights) and not math.isfinite(sum(weights)):
        problems.append("data.sources: the weights add up past the largest number; give them on a smaller scale")
    problems.extend(_listed_twice(data.sources))
    for index, entry in enumerate(data.sources):
        where = f"data.sources[{index}]"
        unknown = [k for k in entry if k not in SOURCE_KEYS + PER_SOURCE_KEYS]
        problems += [
            f"{where}.{k}: not a per-source key (those are {', '.join(SOURCE_KEYS + PER_SOURCE_KEYS)})" for k in unknown
        ]
        if not isinstance(entry.get("source"), str) or not entry["source"]:
            problems.append(f"{where}.source: required (a file, a dataset directory or a Hub id)")
        if "weight" in entry and "fraction" in entry:
            problems.append(f"{where}: give weight or fraction, not both")
        for key, high in (("weight", math.inf), ("fraction", 1.0)):
            value = entry.get(key)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key in entry and not (number and math.isfinite(value) and 0 < value <= high):
                problems.append(f"{where}.{key}: must be a finite number > 0{'' if high == math.inf else ' and <= 1'}")
        if "split" in entry and not isinstance(entry["split"], str):
            problems.append(f"{where}.split: expected a split name")
        keys = {k: v for k, v in entry.items() if k in PER_SOURCE_KEYS}
        problems.extend(data_problems(build_section(DataSection, where, keys, problems)))
    return problems


def _listed_twice(sources: list[dict[str, Any]]) -> list[str]:
    """A source named twice (the same file by any path, or the same Hub id, and split): its rows would train
    twice, and the held-out copy of a pair would be trained on through the other copy."""
    seen: dict[tuple[str, Any], int] = {}
    problems = []
    for index, entry in enumerate(sources):
        source = entry.get("source")
        if not isinstance(source, str) or not source:
            continue
        path = Path(source).expanduser()
        key = (str(path.resolve()) if path.exists() else source, entry.get("split"))
        if key in seen:
            problems.append(
                f"data.sources[{index}]: the same source as data.sources[{seen[key]}] ({source}); listed twice, its "
                "rows would train twice and its held-out pairs would train too. List it once (weight or fraction "
                "sets its share)"
            )
        seen.setdefault(key, index)
    return problems


def source_section(data: DataSection, entry: dict[str, Any]) -> DataSection:
    """The data section one mixture entry is read with: the mixture's keys, then the entry's own."""
    own = {k: v for k, v in entry.items() if k in PER_SOURCE_KEYS or k == "source"}
    if "split" in entry:
        own["train_split"] = entry["split"]
    return dataclasses.replace(data, sources=[], **own)


def loss_problems(losses: list[str], label_smoothing: float, packing: bool = True) -> list[str]:
    """Unknown loss names, exo_pair without the label_smoothing its target needs (TRL refuses it late), and a
    reference-free loss (simpo, orpo) mixed with others or without packing (DPOTrainer computes neither)."""
    known = ", ".join(LOSS_NAMES)
    problems = [
        f"training.loss_type: unknown loss {name!r}; known: {known}{suggest(name, LOSS_NAMES)}"
        for name in losses
        if name not in LOSS_NAMES
    ]
    mixing = mixing_problem(losses)
    if mixing:
        problems.append(f"training.loss_type: {mixing}")
    elif is_reference_free(losses) and not packing:
        problems.append(
            f"training.packing: {losses[0]} trains on the packed path only (TRL's DPOTrainer does not compute it); "
            "set it true"
        )
    if not losses:
        problems.append("training.loss_type: expected at least one loss name")
    if "exo_pair" in losses and label_smoothing == 0:
        problems.append("training.label_smoothing: exo_pair needs it > 0 (its target is 1 - eps and eps), got 0.0")
    return problems


def kto_problems(recipe: Recipe) -> list[str]:
    """What a recipe with ``training.objective: kto`` sets that TRL's KTOTrainer would not read or cannot run, each
    with its fix: refused with the other keys, before any data or weights, rather than silently ignored."""
    t, defaults = recipe.training, TrainingSection()
    losses = [t.loss_type] if isinstance(t.loss_type, str) else list(t.loss_type)
    problems = []
    if losses not in ([name] for name in KTO_LOSS_NAMES):
        problems.append(
            f"training.loss_type: {t.loss_type!r} names DPO pair losses; training.objective kto trains KTO's own loss "
            "(TRL KTOConfig loss_type kto): remove training.loss_type"
        )
    for key in ("loss_weights", "label_smoothing", "simpo_gamma", "cpo_alpha"):
        if getattr(t, key) != getattr(defaults, key):
            problems.append(f"training.{key}: read by the DPO losses only, not by objective kto; remove it")
    problems += padded_trainer_problems(recipe, "KTOTrainer")
    if t.per_device_batch_size < 2:
        problems.append(
            "training.per_device_batch_size: KTO estimates its KL term from the other rows of a batch, so TRL's "
            f"KTOTrainer needs at least 2 rows a batch, got {t.per_device_batch_size}: set it to 2 or more"
        )
    return problems


def sft_problems(recipe: Recipe) -> list[str]:
    """What a recipe with ``training.objective: sft`` sets that TRL's SFTTrainer would not read, each with its fix."""
    t, defaults = recipe.training, TrainingSection()
    preference_keys = [k.split(".")[1] for k in NOT_READ_BY["sft"] if k.startswith("training.") and "packing" not in k]
    problems = [
        f"training.{key}: read by the preference losses only, not by objective sft; remove it"
        for key in preference_keys
        if getattr(t, key) != getattr(defaults, key)
    ]
    return problems + padded_trainer_problems(recipe, "SFTTrainer")


def padded_trainer_problems(recipe: Recipe, trainer: str) -> list[str]:
    """The packed path's keys, which an objective trained by TRL's ``trainer`` on padded rows does not read."""
    objective, problems = recipe.training.objective, []
    if recipe.eval.steps is not None:
        problems.append(
            f"eval.steps: the held-out evaluation during training scores pairs on the packed path (objective dpo); "
            f"objective {objective} scores its held-out rows at the end only: remove eval.steps (and "
            "training.early_stopping)"
        )
    if recipe.training.packing:
        problems.append(
            f"training.packing: the packed path computes DPO's losses; objective {objective} trains with TRL's "
            f"{trainer} on padded rows: remove training.packing (false is its default under {objective})"
        )
    if recipe.lora.token_learning_rate is not None:
        problems.append(
            f"lora.token_learning_rate: a learning rate of the packed path's optimizer; under objective {objective} "
            "the lora.trainable_tokens rows train at training.learning_rate: remove it"
        )
    return problems
