"""Recipes: YAML files loaded into typed dataclasses.

The dataclasses below are the single place where every recipe key is documented (the
``help`` metadata); ``dpo-recipe recipes keys`` prints them. Validation happens here, before
any data or model is touched, so that a typo costs a second, not a training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpo_recipe.errors import RecipeError
from dpo_recipe.resources import packaged_dir


def _key(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class ModelSection:
    name_or_path: str = _key("", "Hub id (e.g. microsoft/DialoGPT-small) or local model directory.")
    gguf_file: str | None = _key(
        None,
        "GGUF file to load weights from: a path, or 'package:MODULE/FILE' for a file shipped in "
        "an installed Python package. Converted once to safetensors and cached.",
    )
    revision: str = _key("main", "Hub revision (branch, tag or commit) of the model.")
    dtype: str = _key(
        "float32",
        "Weights dtype: float32, bfloat16 or float16.",
        choices=("float32", "bfloat16", "float16"),
    )
    trust_remote_code: bool = _key(False, "Run model code from the Hub repo. Off unless set here.")
    chat_template: str | None = _key(
        None,
        "Chat template for a base model that has none (or to replace its own): a packaged name "
        "('gemma': Gemma's turn markers) or a .jinja file. Saved with the adapter's tokenizer, so "
        "training, evaluation, chat and the Hub card all use the same prompt form.",
    )
    load_in_4bit: bool = _key(False, "QLoRA: load the base in 4-bit with bitsandbytes (CUDA only).")


@dataclass
class LoraSection:
    r: int = _key(16, "LoRA rank.", min=1)
    alpha: int = _key(32, "LoRA scaling numerator (scale = alpha / r).", min=1)
    dropout: float = _key(
        0.05, "Dropout on the LoRA input (active only if training.disable_dropout is false).", min=0.0, max=1.0
    )
    target_modules: list[str] | str = _key(["q_proj", "v_proj"], "Module names to adapt, or 'all-linear'.")
    trainable_tokens: list[str] = _key(
        [],
        "Tokens whose embedding rows train too (PEFT trainable_token_indices; with tied embeddings, their LM-head "
        "rows as well). A base model never trained the turn markers its chat template adds, so LoRA alone cannot "
        "teach it to end a turn: name them here, e.g. ['<start_of_turn>', '<end_of_turn>'].",
    )
    token_learning_rate: float | None = _key(
        None,
        "Peak learning rate of the trainable_tokens rows (default: training.learning_rate). Untrained rows have "
        "far to go and are few parameters; at LoRA's rate they move too little in a short run.",
        min_exclusive=0.0,
    )


# data.form: how rows hold a pair (data_forms.py)
DATA_FORMS = ("auto", "standard", "implicit", "hh", "ranked", "sharegpt", "openai", "unpaired")
CHAT_ROLES = ("system", "user", "assistant")  # the roles of TRL's conversational form, what data.roles maps onto
# data.sources entries: where and how one source's rows are read, plus how many of them the mixture takes
SOURCE_KEYS = ("source", "split", "weight", "fraction")
PER_SOURCE_KEYS = (
    "form",
    "prompt_column",
    "chosen_column",
    "rejected_column",
    "system_column",
    "roles",
    "ranked_column",
    "ranked_text_field",
    "ranked_score_field",
    "ranked_better",
    "ranked_pairs",
    "ranked_margin",
    "revision",
)


@dataclass
class DataSection:
    source: str = _key(
        "builtin:ja-preferences",
        "Where pairs come from: 'builtin:ja-preferences' (generated in memory), a JSONL / CSV / "
        "Parquet file, a saved dataset directory, or a Hub dataset id.",
    )
    num_pairs: int = _key(1000, "Pairs to generate for the builtin source.", min=10)
    seed: int = _key(0, "Generator seed for the builtin source.")
    train_split: str = _key("train", "Split to train on.")
    test_split: str = _key("test", "Held-out split to evaluate on (created with test_size if absent).")
    test_size: float = _key(0.1, "Share held out when the source has no test split.", min=0.0, max=0.9)
    max_train_pairs: int | None = _key(None, "Train on the first N pairs only (CPU-sized slices).", min=1)
    max_eval_pairs: int | None = _key(None, "Evaluate on the first N held-out pairs only.", min=1)
    form: str = _key(
        "auto",
        "How the rows hold a pair (dpo_recipe.data_forms): standard (prompt / chosen / rejected, text or messages), "
        "implicit (chosen and rejected only, the prompt inside both: the longest shared text prefix, or for messages "
        "everything before the last assistant turn, as TRL extracts it), hh (Anthropic HH-RLHF text turns "
        "'\\n\\nHuman:' / '\\n\\nAssistant:', turned into messages so the chat template applies), ranked "
        "(several scored answers per prompt, paired by ranked_pairs), sharegpt (a conversations / messages column of "
        "{from, value} or {role, content} turns with chosen / rejected answers as text, one message or a list), "
        "openai (OpenAI's preference fine-tuning JSONL: input.messages, preferred_output, non_preferred_output), "
        "unpaired (prompt / completion / label, one judged answer a row: linted and converted, not trained by DPO), "
        "or auto (detected from the columns and values, and printed).",
        choices=DATA_FORMS,
    )
    prompt_column: list[str] | str = _key(
        "prompt",
        "Column holding the prompt (renamed to 'prompt'), or a list of columns joined by a blank line into the "
        "prompt, empty ones skipped (e.g. [instruction, input]).",
    )
    chosen_column: str = _key("chosen", "Column holding the preferred answer (e.g. response_j).")
    rejected_column: str = _key("rejected", "Column holding the dispreferred answer (e.g. response_k).")
    ranked_column: str = _key(
        "responses",
        "form ranked: the column with a prompt's answers, either a list of objects per row (each with "
        "ranked_text_field and ranked_score_field) or one answer's text per row (rows with the same prompt are "
        "grouped; ranked_score_field is then a column).",
    )
    ranked_text_field: str = _key("text", "form ranked: the field of an answer object that holds its text.")
    ranked_score_field: str = _key("score", "form ranked: the field (or column) that holds an answer's score or rank.")
    ranked_better: str = _key(
        "higher",
        "form ranked: which scores are better: higher (ratings) or lower (ranks, 1 = best).",
        choices=("higher", "lower"),
    )
    ranked_pairs: str = _key(
        "best_vs_worst",
        "form ranked: how answers become pairs: best_vs_worst (one pair per prompt, the best answer against the "
        "worst; prompts whose answers all tie give none) or margin (every two answers whose scores differ by "
        "at least ranked_margin).",
        choices=("best_vs_worst", "margin"),
    )
    ranked_margin: float = _key(
        1.0, "form ranked, ranked_pairs margin: the smallest score difference that makes a pair.", min_exclusive=0.0
    )
    system_column: str | None = _key(
        "system",
        "Column holding a system prompt (orca_dpo_pairs, LLaMA-Factory's ShareGPT): where a row has one, it becomes "
        "the prompt's first message, and text pairs become messages so the chat template renders it. null: keep "
        "the column as a plain column.",
    )
    roles: dict[str, str] = _key(
        {},
        "Role names of the data mapped onto system / user / assistant, e.g. {human: user, bot: assistant}. Added to "
        "the names every chat form knows (human and user, gpt / assistant / model, system / developer).",
    )
    sources: list[dict[str, Any]] = _key(
        [],
        "A mixture instead of data.source: a list of {source, split, weight or fraction, and any of form, "
        "prompt_column, chosen_column, rejected_column, system_column, roles, ranked_*, revision}. Each source is read "
        "in its own form; fraction takes that share of its rows, weight interleaves the sources with those "
        "probabilities (seeded by data.seed, until one runs out), neither concatenates them. Each row keeps its "
        "source in a data_source column.",
    )
    revision: str | None = _key(None, "Hub revision of a Hub dataset.")
    as_conversation: bool = _key(
        False,
        "Turn plain-text pairs into one user turn and one assistant answer, so the model's chat template "
        "renders them (and the answer ends where a turn ends). Rows already in messages form are kept.",
    )


@dataclass
class TrainingSection:
    output_dir: str = _key("outputs/run", "Where the adapter, metrics, plots and card are written.")
    num_epochs: float = _key(1.0, "Passes over the training pairs.", min_exclusive=0.0)
    per_device_batch_size: int = _key(1, "Pairs per device per forward pass.", min=1)
    gradient_accumulation_steps: int = _key(4, "Forward passes per optimizer step.", min=1)
    learning_rate: float = _key(5e-6, "Peak learning rate.", min_exclusive=0.0)
    lr_scheduler: str = _key("linear", "Learning-rate schedule (transformers name).")
    warmup_steps: int = _key(0, "Linear warm-up steps.", min=0)
    max_grad_norm: float = _key(1.0, "Gradient clipping norm.", min_exclusive=0.0)
    beta: float = _key(
        0.1,
        "DPO temperature: how far the policy may move from the reference. For simpo it scales the mean "
        "log-prob margin (the SimPO paper uses about 2 to 2.5); for orpo it is lambda, the odds-ratio term's weight.",
        min_exclusive=0.0,
    )
    loss_type: list[str] | str = _key(
        "sigmoid",
        "TRL loss_type: one name or a list combined with loss_weights. Every TRL 1.16 DPO loss, packed or not: "
        "sigmoid (DPO), hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, "
        "apo_down, discopop, sft (NLL of chosen; [sigmoid, sft] is RPO), sigmoid_norm. Reference-free, alone and "
        "packed only (no reference pass runs): simpo (TRL's CPOTrainer loss_type simpo; reads simpo_gamma, "
        "cpo_alpha, label_smoothing) and orpo (TRL's ORPOTrainer: NLL of prompt and chosen answer, less beta x "
        "log-sigmoid of the log odds ratio). See dpo_recipe.losses.",
    )
    loss_weights: list[float] | None = _key(None, "TRL loss_weights: one weight per loss_type entry (default all 1).")
    label_smoothing: float = _key(
        0.0,
        "TRL label_smoothing: the assumed share of flipped preference labels, read by robust, exo_pair "
        "(which needs it > 0), aot, aot_unpaired and simpo.",
        min=0.0,
        max_exclusive=0.5,
    )
    simpo_gamma: float = _key(
        0.5,
        "TRL simpo_gamma (CPOConfig): SimPO's target reward margin gamma; the loss is -log sigmoid(beta x "
        "(mean log-prob margin) - gamma). Read by loss_type simpo only.",
        min=0.0,
    )
    cpo_alpha: float = _key(
        0.0,
        "TRL cpo_alpha (CPOConfig): weight of the NLL of the chosen answers added to simpo. 0 is SimPO as its "
        "paper has it (TRL's CPOConfig default, 1.0, is CPO-SimPO). Read by loss_type simpo only.",
        min=0.0,
    )
    max_length: int = _key(128, "Tokens of prompt + completion; the end is truncated.", min=16)
    precision: str = _key(
        "auto",
        "auto (bf16 on GPUs that support it, else fp32), fp32, bf16 or fp16.",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    activation_checkpointing: bool = _key(False, "Recompute activations to save memory (slower).")
    disable_dropout: bool = _key(True, "Zero every dropout, LoRA's included (TRL default).")
    seed: int = _key(42, "Seed for initialisation and data order.")
    logging_steps: int = _key(5, "Optimizer steps between log lines.", min=1)
    save_steps: int = _key(50, "Optimizer steps between checkpoints.", min=1)
    save_total_limit: int = _key(2, "Checkpoints kept (oldest deleted).", min=1)
    tensorboard: bool = _key(False, "Also write TensorBoard events to output_dir/runs.")
    packing: bool = _key(
        True,
        "Pack each pair into one sequence (prompt computed once, no padding, LM head on completion tokens "
        "only) and compute reference log-probs once, cached on disk. Same loss as TRL; false = plain DPOTrainer.",
    )


@dataclass
class EvalSection:
    batch_size: int = _key(
        1,
        "Held-out pairs packed into one row per forward pass. 1 is fastest on a CPU (a row's attention "
        "grows with the square of its length); a GPU can take more.",
        min=1,
    )
    num_generations: int = _key(
        4,
        "Held-out prompts (one per topic) answered greedily by the base and the tuned model, and scored by the "
        "answer checks (Japanese share, topic named, repetition, sentence end).",
        min=0,
    )
    max_new_tokens: int = _key(64, "Token budget of those answers.", min=1)
    repetition_penalty: float = _key(
        1.0,
        "Decoding: divide the logits of tokens the answer already wrote (transformers' repetition_penalty, "
        "not counting the question's tokens, so the topic asked about may be named; 1 = off). "
        "Base and tuned model answer under the same settings, and the report and card say which.",
        min=1.0,
    )
    no_repeat_ngram_size: int = _key(0, "Decoding: never repeat an n-gram of this many tokens (0 = off).", min=0)


@dataclass
class HubSection:
    push: bool = _key(False, "Push the adapter to the Hub at the end of training.")
    repo_id: str | None = _key(None, "Target repo, USER/NAME.")
    private: bool = _key(False, "Create the repo private.")
    revision: str | None = _key(None, "Branch to push to (default main).")
    license: str = _key("apache-2.0", "License written into the model card.")


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    hub: HubSection = field(default_factory=HubSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS: dict[str, type] = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Recipe)}
REQUIRED_SECTIONS = ("model",)


# ---------------------------------------------------------------------------- locating


def recipes_dir() -> Path:
    return packaged_dir("recipes")


def packaged_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def recipe_summary(path: Path) -> str:
    """The first comment line of a recipe: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def resolve_recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    packaged = packaged_recipes()
    if name_or_path in packaged:
        return packaged[name_or_path]
    close = difflib.get_close_matches(name_or_path, packaged, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise RecipeError(
        f"Recipe '{name_or_path}' is neither an existing file nor a packaged recipe.{hint} "
        f"Packaged recipes: {', '.join(packaged)}. Run 'dpo-recipe recipes list' to see them."
    )


# ---------------------------------------------------------------------------- loading


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe, apply ``key=value`` overrides, and validate everything at once."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}: YAML syntax error{where}: {problem}. Fix the YAML and retry.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections ({', '.join(SECTIONS)}).")
    raw = apply_overrides(raw, overrides, source=str(path))
    return recipe_from_dict(raw, source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    """Apply CLI ``section.key=value`` overrides; values are parsed as YAML scalars/lists."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    seen: dict[str, str] = {}
    for item in overrides:
        dotted, sep, text = item.partition("=")
        dotted = dotted.strip()
        if not sep or dotted.count(".") != 1:
            raise RecipeError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set training.learning_rate=1e-5.")
        if dotted in seen and seen[dotted] != text:
            raise RecipeError(
                f"--set {dotted} is given twice with different values ({seen[dotted]!r} and {text!r}); keep one."
            )
        seen[dotted] = text
        section, key = dotted.split(".")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise RecipeError(f"{source}: section '{section}' must be a mapping.")
        target[key] = value
    return merged


def data_section(values: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> DataSection:
    """A data section without a recipe, for the data commands (``data lint`` / ``convert`` / ``push``).

    ``values`` are the command's own options, ``overrides`` its ``--set data.KEY=VALUE`` items; both are
    checked as a recipe's keys are, so a key means the same on the command line as in a recipe.
    """
    raw = apply_overrides({"data": dict(values)}, overrides, source="--set")
    problems = [f"{name}: a data command takes data.KEY=VALUE only" for name in raw if name != "data"]
    section = _build_section(DataSection, "data", raw["data"], problems)
    if not problems:
        problems.extend(data_problems(section))
    if problems:
        raise RecipeError(f"{'; '.join(problems)}. See 'dpo-recipe recipes keys' for every key and its form.")
    return section


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    problems: list[str] = []
    for name in raw:
        if name not in SECTIONS:
            problems.append(f"{name}: unknown section{_suggest(name, SECTIONS)}")
    for name in REQUIRED_SECTIONS:
        if name not in raw:
            problems.append(f"{name}: required section is missing")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            problems.append(f"{name}: expected a mapping of keys, got {type(values).__name__}")
            values = {}
        sections[name] = _build_section(cls, name, values, problems)
    recipe = Recipe(**sections)
    if not problems:
        problems.extend(_cross_checks(recipe))
    if problems:
        listing = "; ".join(problems).rstrip("?") + ("?" if problems[-1].endswith("?") else ".")
        raise RecipeError(f"{source}: {listing} See 'dpo-recipe recipes keys' for every key and its form.")
    return recipe


def _suggest(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _build_section(cls: type, section: str, values: dict[str, Any], problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{section}.{key}"
        if key not in fields:
            problems.append(f"{dotted}: unknown key{_suggest(key, fields)}")
            continue
        converted, error = _convert(value, hints[key])
        if error:
            problems.append(f"{dotted}: expected {error}, got {value!r}")
            continue
        range_error = _check_range(converted, fields[key].metadata)
        if range_error:
            problems.append(f"{dotted}: {range_error}, got {value!r}")
            continue
        kwargs[key] = converted
    return cls(**kwargs)


def _convert(value: Any, hint: Any) -> tuple[Any, str | None]:
    """Coerce a YAML value to a field's type; returns (value, expected-form or None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        return (None, None) if type(None) in options else (None, _describe(hint))
    for option in options:
        if option is bool and isinstance(value, bool):
            return value, None
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if option is float and not isinstance(value, bool):
            number = _finite_float(value)
            if number is not None:
                return number, None
        if option is str and isinstance(value, str):
            return value, None
        strings = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        if option == dict[str, str] and strings:
            return dict(value), None
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            if typing.get_origin(item) is dict and all(isinstance(v, dict) for v in value):
                return [dict(v) for v in value], None
            if item is str and all(isinstance(v, str) for v in value):
                return list(value), None
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            if item is float and numbers and all(math.isfinite(v) for v in value):
                return [float(v) for v in value], None
    return None, _describe(hint)


def _finite_float(value: Any) -> float | None:
    """A number, or None: YAML reads ``.nan`` and ``.inf`` as floats, and no recipe key means either.

    NaN passes every range check (all comparisons are false) and only fails later, in torch's
    optimizer or numpy's plotting, after the model has loaded; so it is refused here.
    """
    if isinstance(value, str):
        try:  # YAML 1.1 reads "5e-6" (no dot) as a string
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    lists = {
        list[str]: "a list of strings",
        list[float]: "a list of finite numbers",
        dict[str, str]: "a mapping of names to names",
        list[dict[str, Any]]: "a list of mappings",
    }
    parts = [names.get(o) or lists[o] for o in options]
    return " or ".join(parts)


def _check_range(value: Any, meta: Any) -> str | None:
    if value is None:
        return None
    if "choices" in meta and value not in meta["choices"]:
        return f"expected one of {', '.join(meta['choices'])}"
    if "min" in meta and value < meta["min"]:
        return f"must be >= {meta['min']}"
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        return f"must be > {meta['min_exclusive']}"
    if "max" in meta and value > meta["max"]:
        return f"must be <= {meta['max']}"
    if "max_exclusive" in meta and value >= meta["max_exclusive"]:
        return f"must be < {meta['max_exclusive']}"
    return None


def _cross_checks(recipe: Recipe) -> list[str]:
    problems = []
    if not recipe.model.name_or_path and not recipe.model.gguf_file:
        problems.append("model.name_or_path: required (a Hub id or a local directory)")
    if isinstance(recipe.lora.target_modules, list) and not recipe.lora.target_modules:
        problems.append("lora.target_modules: expected at least one module name or 'all-linear'")
    if not recipe.data.test_split:
        problems.append("data.test_split: the eval split name must not be empty")
    problems.extend(data_problems(recipe.data))
    losses = [recipe.training.loss_type] if isinstance(recipe.training.loss_type, str) else recipe.training.loss_type
    problems.extend(_loss_problems(losses, recipe.training.label_smoothing, recipe.training.packing))
    weights = recipe.training.loss_weights
    if weights is not None and len(weights) != len(losses):
        problems.append(
            f"training.loss_weights: {len(weights)} weights for {len(losses)} loss types; give one per loss_type entry"
        )
    if recipe.hub.push and not recipe.hub.repo_id:
        problems.append("hub.repo_id: required when hub.push is true (USER/NAME)")
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
        for key, low, high in (("weight", 0.0, math.inf), ("fraction", 0.0, 1.0)):
            value = entry.get(key)
            if key in entry and not (isinstance(value, (int, float)) and low < value <= high):
                problems.append(f"{where}.{key}: must be a number > {low:g}{'' if high == math.inf else ' and <= 1'}")
        if "split" in entry and not isinstance(entry["split"], str):
            problems.append(f"{where}.split: expected a split name")
        keys = {k: v for k, v in entry.items() if k in PER_SOURCE_KEYS}
        problems.extend(data_problems(_build_section(DataSection, where, keys, problems)))
    return problems


def source_section(data: DataSection, entry: dict[str, Any]) -> DataSection:
    """The data section one mixture entry is read with: the mixture's keys, then the entry's own."""
    own = {k: v for k, v in entry.items() if k in PER_SOURCE_KEYS or k == "source"}
    if "split" in entry:
        own["train_split"] = entry["split"]
    return dataclasses.replace(data, sources=[], **own)


def _loss_problems(losses: list[str], label_smoothing: float, packing: bool = True) -> list[str]:
    """Unknown loss names, exo_pair without the label_smoothing its target needs (TRL refuses it late), and a
    reference-free loss (simpo, orpo) mixed with others or without packing (DPOTrainer computes neither)."""
    from dpo_recipe.losses import LOSSES, is_reference_free, mixing_problem  # imports torch; the loss names

    known = ", ".join(LOSSES)
    problems = [
        f"training.loss_type: unknown loss {name!r}; known: {known}{_suggest(name, LOSSES)}"
        for name in losses
        if name not in LOSSES
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


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every recipe key, for docs and the CLI."""
    rows = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append((f"{section}.{f.name}", _describe(hints[f.name]), repr(default), f.metadata["help"]))
    return rows
