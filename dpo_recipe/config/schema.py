"""Every recipe key, typed and documented once: the section dataclasses (their ``help`` metadata is what
``dpo-recipe recipes keys`` prints).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from dpo_recipe.config.vocabulary import DATA_FORMS, GATES, OBJECTIVES, ROUND_REFERENCES, RULE_WEIGHTS


def recipe_key(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class ModelSection:
    name_or_path: str = recipe_key("", "Hub id (e.g. microsoft/DialoGPT-small) or local model directory.")
    gguf_file: str | None = recipe_key(
        None,
        "GGUF file to load weights from: a path, or 'package:MODULE/FILE' for a file shipped in "
        "an installed Python package. Converted once to safetensors and cached.",
    )
    revision: str = recipe_key("main", "Hub revision (branch, tag or commit) of the model.")
    dtype: str = recipe_key(
        "float32",
        "Weights dtype: float32, bfloat16 or float16.",
        choices=("float32", "bfloat16", "float16"),
    )
    trust_remote_code: bool = recipe_key(False, "Run model code from the Hub repo. Off unless set here.")
    chat_template: str | None = recipe_key(
        None,
        "Chat template for a base model that has none (or to replace its own): a packaged name "
        "('gemma': Gemma's turn markers) or a .jinja file. Saved with the adapter's tokenizer, so "
        "training, evaluation, chat and the Hub card all use the same prompt form.",
    )
    load_in_4bit: bool = recipe_key(False, "QLoRA: load the base in 4-bit with bitsandbytes (CUDA only).")
    init_adapter: str | None = recipe_key(
        None,
        "A LoRA adapter to start from (a training run's output directory or a Hub id), e.g. an SFT run before "
        "DPO, or an earlier DPO run to continue. Merged into the base weights in memory, then a new adapter "
        "trains on top: the reference is the starting policy, base + this adapter, and the new adapter is "
        "used on that same merged base (eval / chat merge it too). lora.train_init_adapter trains it further "
        "instead.",
    )


@dataclass
class LoraSection:
    r: int = recipe_key(16, "LoRA rank.", min=1)
    alpha: int = recipe_key(32, "LoRA scaling numerator (scale = alpha / r).", min=1)
    dropout: float = recipe_key(
        0.05, "Dropout on the LoRA input (active only if training.disable_dropout is false).", min=0.0, max=1.0
    )
    target_modules: list[str] | str = recipe_key(["q_proj", "v_proj"], "Module names to adapt, or 'all-linear'.")
    trainable_tokens: list[str] = recipe_key(
        [],
        "Tokens whose embedding rows train too (PEFT trainable_token_indices; with tied embeddings, their LM-head "
        "rows as well). A base model never trained the turn markers its chat template adds, so LoRA alone cannot "
        "teach it to end a turn: name them here, e.g. ['<start_of_turn>', '<end_of_turn>'].",
    )
    train_init_adapter: bool = recipe_key(
        False,
        "With model.init_adapter: train that adapter further (its own rank and target modules, which lora.r and "
        "lora.target_modules must repeat) instead of adding a new one; the reference is its starting state, a "
        "frozen copy. The output is a whole adapter for the bare base.",
    )
    init_adapter_reference: str = recipe_key(
        "start",
        "With lora.train_init_adapter: the DPO reference. start: the adapter as loaded, a frozen copy (TRL's default); "
        "base: the bare base model, adapters off (on-policy rounds' first_model reference, dpo-recipe iterate).",
        choices=("start", "base"),
    )
    token_learning_rate: float | None = recipe_key(
        None,
        "Peak learning rate of the trainable_tokens rows (default: training.learning_rate). Untrained rows have "
        "far to go and are few parameters; at LoRA's rate they move too little in a short run.",
        min_exclusive=0.0,
    )


@dataclass
class DataSection:
    source: str = recipe_key(
        "builtin:ja-preferences",
        "Where pairs come from: 'builtin:ja-preferences' (generated in memory), a JSONL / CSV / "
        "Parquet file, a saved dataset directory, or a Hub dataset id.",
    )
    # the generator keeps every pair in memory: a bound stops a typo (1e9) from exhausting it in a dry run
    num_pairs: int = recipe_key(1000, "Pairs to generate for the builtin source.", min=10, max=1_000_000)
    seed: int = recipe_key(0, "Generator seed for the builtin source.")
    train_split: str = recipe_key("train", "Split to train on.")
    test_split: str = recipe_key("test", "Held-out split to evaluate on (created with test_size if absent).")
    test_size: float = recipe_key(0.1, "Share held out when the source has no test split.", min=0.0, max=0.9)
    max_train_pairs: int | None = recipe_key(
        None, "Train on N pairs only, chosen after a shuffle seeded by data.seed (CPU-sized slices).", min=1
    )
    max_eval_pairs: int | None = recipe_key(
        None, "Evaluate on N held-out pairs only, chosen after a shuffle seeded by data.seed.", min=1
    )
    form: str = recipe_key(
        "auto",
        "How the rows hold a pair (dpo_recipe.data.forms): standard (prompt / chosen / rejected, text or messages), "
        "implicit (chosen and rejected only, the prompt inside both: the longest shared text prefix, or for messages "
        "everything before the last assistant turn, as TRL extracts it), hh (Anthropic HH-RLHF text turns "
        "'\\n\\nHuman:' / '\\n\\nAssistant:', turned into messages so the chat template applies), ranked "
        "(several scored answers per prompt, paired by ranked_pairs), sharegpt (a conversations / messages column of "
        "{from, value} or {role, content} turns with chosen / rejected answers as text, one message or a list), "
        "openai (OpenAI's preference fine-tuning JSONL: input.messages, preferred_output, non_preferred_output), "
        "unpaired (prompt / completion / label, one judged answer a row: trained with training.objective kto), "
        "or auto (detected from the columns and values, and printed).",
        choices=DATA_FORMS,
    )
    prompt_column: list[str] | str = recipe_key(
        "prompt",
        "Column holding the prompt (renamed to 'prompt'), or a list of columns joined by a blank line into the "
        "prompt, empty ones skipped (e.g. [instruction, input]).",
    )
    chosen_column: str = recipe_key("chosen", "Column holding the preferred answer (e.g. response_j).")
    rejected_column: str = recipe_key("rejected", "Column holding the dispreferred answer (e.g. response_k).")
    ranked_column: str = recipe_key(
        "responses",
        "form ranked: the column with a prompt's answers, either a list of objects per row (each with "
        "ranked_text_field and ranked_score_field) or one answer's text per row (rows with the same prompt are "
        "grouped; ranked_score_field is then a column).",
    )
    ranked_text_field: str = recipe_key("text", "form ranked: the field of an answer object that holds its text.")
    ranked_score_field: str = recipe_key(
        "score", "form ranked: the field (or column) that holds an answer's score or rank."
    )
    ranked_better: str = recipe_key(
        "higher",
        "form ranked: which scores are better: higher (ratings) or lower (ranks, 1 = best).",
        choices=("higher", "lower"),
    )
    ranked_pairs: str = recipe_key(
        "best_vs_worst",
        "form ranked: how answers become pairs: best_vs_worst (one pair per prompt, the best answer against the "
        "worst; prompts whose answers all tie give none) or margin (every two answers whose scores differ by "
        "at least ranked_margin).",
        choices=("best_vs_worst", "margin"),
    )
    ranked_margin: float = recipe_key(
        1.0, "form ranked, ranked_pairs margin: the smallest score difference that makes a pair.", min_exclusive=0.0
    )
    system_column: str | None = recipe_key(
        "system",
        "Column holding a system prompt (orca_dpo_pairs, LLaMA-Factory's ShareGPT): where a row has one, it becomes "
        "the prompt's first message, and text pairs become messages so the chat template renders it. null: keep "
        "the column as a plain column.",
    )
    roles: dict[str, str] = recipe_key(
        {},
        "Role names of the data mapped onto system / user / assistant, e.g. {human: user, bot: assistant}. Added to "
        "the names every chat form knows (human and user, gpt / assistant / model, system / developer).",
    )
    sources: list[dict[str, Any]] = recipe_key(
        [],
        "A mixture instead of data.source: a list of {source, split, weight or fraction, and any of form, "
        "prompt_column, chosen_column, rejected_column, system_column, roles, ranked_*, revision}. Each source is read "
        "in its own form; fraction takes that share of its rows, weight interleaves the sources with those "
        "probabilities (seeded by data.seed, until one runs out), neither concatenates them. Each row keeps its "
        "source in a data_source column.",
    )
    revision: str | None = recipe_key(None, "Hub revision of a Hub dataset.")
    as_conversation: bool = recipe_key(
        False,
        "Turn plain-text pairs into one user turn and one assistant answer, so the model's chat template "
        "renders them (and the answer ends where a turn ends). Rows already in messages form are kept.",
    )


@dataclass
class TrainingSection:
    output_dir: str = recipe_key("outputs/run", "Where the adapter, metrics, plots and card are written.")
    # bounded so that a typo, or a fetched recipe, cannot ask for a run that never ends
    num_epochs: float = recipe_key(1.0, "Passes over the training pairs.", min_exclusive=0.0, max=1000.0)
    per_device_batch_size: int = recipe_key(1, "Pairs per device per forward pass.", min=1)
    gradient_accumulation_steps: int = recipe_key(4, "Forward passes per optimizer step.", min=1)
    learning_rate: float = recipe_key(5e-6, "Peak learning rate.", min_exclusive=0.0)
    lr_scheduler: str = recipe_key("linear", "Learning-rate schedule (transformers name).")
    warmup_steps: int = recipe_key(0, "Linear warm-up steps.", min=0)
    max_grad_norm: float = recipe_key(1.0, "Gradient clipping norm.", min_exclusive=0.0)
    objective: str = recipe_key(
        "dpo",
        "dpo: pairs (prompt / chosen / rejected) with one of the loss_type losses. kto: TRL's KTOTrainer on unpaired "
        "rows (prompt / completion / label, the unpaired form), pairs split into such rows automatically; reads "
        "desirable_weight and undesirable_weight, needs per_device_batch_size >= 2. sft: TRL's SFTTrainer on the "
        "chosen answers of pairs (or the desirable rows of unpaired data), loss on the completion only; its "
        "adapter is the next run's model.init_adapter. packing defaults to false under kto and sft "
        "(dpo_recipe.training.objectives).",
        choices=OBJECTIVES,
    )
    desirable_weight: float = recipe_key(
        1.0, "TRL desirable_weight (KTOConfig, objective kto): weight of the desirable rows' loss.", min_exclusive=0.0
    )
    undesirable_weight: float = recipe_key(
        1.0,
        "TRL undesirable_weight (KTOConfig, objective kto): weight of the undesirable rows' loss. With unequal "
        "counts KTO's paper keeps desirable_weight x desirable rows / (undesirable_weight x undesirable rows) "
        "in [1, 4/3].",
        min_exclusive=0.0,
    )
    beta: float = recipe_key(
        0.1,
        "DPO temperature: how far the policy may move from the reference. For simpo it scales the mean "
        "log-prob margin (the SimPO paper uses about 2 to 2.5); for orpo it is lambda, the odds-ratio term's weight.",
        min_exclusive=0.0,
    )
    loss_type: list[str] | str = recipe_key(
        "sigmoid",
        "TRL loss_type: one name or a list combined with loss_weights. Every TRL 1.16 DPO loss, packed or not: "
        "sigmoid (DPO), hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, "
        "apo_down, discopop, sft (NLL of chosen; [sigmoid, sft] is RPO), sigmoid_norm. Reference-free, alone and "
        "packed only (no reference pass runs): simpo (TRL's CPOTrainer loss_type simpo; reads simpo_gamma, "
        "cpo_alpha, label_smoothing) and orpo (TRL's ORPOTrainer: NLL of prompt and chosen answer, less beta x "
        "log-sigmoid of the log odds ratio). See dpo_recipe.training.losses.",
    )
    loss_weights: list[float] | None = recipe_key(
        None, "TRL loss_weights: one weight per loss_type entry (default all 1)."
    )
    label_smoothing: float = recipe_key(
        0.0,
        "TRL label_smoothing: the assumed share of flipped preference labels, read by robust, exo_pair "
        "(which needs it > 0), aot, aot_unpaired and simpo.",
        min=0.0,
        max_exclusive=0.5,
    )
    simpo_gamma: float = recipe_key(
        0.5,
        "TRL simpo_gamma (CPOConfig): SimPO's target reward margin gamma; the loss is -log sigmoid(beta x "
        "(mean log-prob margin) - gamma). Read by loss_type simpo only.",
        min=0.0,
    )
    cpo_alpha: float = recipe_key(
        0.0,
        "TRL cpo_alpha (CPOConfig): weight of the NLL of the chosen answers added to simpo. 0 is SimPO as its "
        "paper has it (TRL's CPOConfig default, 1.0, is CPO-SimPO). Read by loss_type simpo only.",
        min=0.0,
    )
    max_length: int = recipe_key(128, "Tokens of prompt + completion; the end is truncated.", min=16)
    precision: str = recipe_key(
        "auto",
        "auto (bf16 on GPUs that support it, else fp32), fp32, bf16 or fp16.",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    activation_checkpointing: bool = recipe_key(False, "Recompute activations to save memory (slower).")
    disable_dropout: bool = recipe_key(True, "Zero every dropout, LoRA's included (TRL default).")
    seed: int = recipe_key(42, "Seed for initialisation and data order.")
    logging_steps: int = recipe_key(5, "Optimizer steps between log lines.", min=1)
    save_steps: int = recipe_key(50, "Optimizer steps between checkpoints.", min=1)
    save_total_limit: int = recipe_key(2, "Checkpoints kept (oldest deleted).", min=1)
    report_to: list[str] | str = recipe_key(
        [],
        "Trackers that get the training curves (and eval.steps' held-out points) besides train_log.jsonl, through "
        "transformers' integrations: any of tensorboard (events in output_dir/runs), wandb (Weights & Biases; "
        "WANDB_MODE=offline logs without an account), trackio (a local project, 'trackio show'), or none. The run "
        "is named after output_dir, the recipe is its config and the final held-out report its summary. wandb and "
        "trackio are extras: pip install 'dpo-recipe[wandb]' / 'dpo-recipe[trackio]'.",
    )
    tensorboard: bool = recipe_key(
        False, "Same as tensorboard in training.report_to (kept for recipes written before report_to)."
    )
    early_stopping: dict[str, Any] | None = recipe_key(
        None,
        "Stop when the held-out metric eval.steps measures has not improved for `patience` evaluations in a row, "
        "and keep the adapter of its best step (saved as a checkpoint when it was measured): {patience: N, "
        "metric: loss | reward_accuracy | reward_margin} (metric defaults to loss; a tie is no improvement). "
        "metrics.json, the card and the last line say which step the adapter comes from.",
    )
    packing: bool = recipe_key(
        True,
        "Pack each pair into one sequence (prompt computed once, no padding, LM head on completion tokens "
        "only) and compute reference log-probs once, cached on disk. Same loss as TRL; false = plain DPOTrainer. "
        "Objective dpo only: under kto it defaults to false.",
    )


@dataclass
class EvalSection:
    batch_size: int = recipe_key(
        1,
        "Held-out pairs packed into one row; rows are stacked up to a token budget a forward pass. 1 "
        "computes no attention the block mask hides (a row's attention grows with the square of its length).",
        min=1,
    )
    num_generations: int = recipe_key(
        4,
        "Held-out prompts (one per topic, then a second per topic, ...) answered greedily by the base and the "
        "tuned model, and scored by the "
        "answer checks (Japanese share, topic named, repetition, sentence end).",
        min=0,
    )
    max_new_tokens: int = recipe_key(64, "Token budget of those answers.", min=1, max=32768)
    repetition_penalty: float = recipe_key(
        1.0,
        "Decoding: divide the logits of tokens the answer already wrote (transformers' repetition_penalty, "
        "not counting the question's tokens, so the topic asked about may be named; 1 = off). "
        "Base and tuned model answer under the same settings, and the report and card say which.",
        min=1.0,
    )
    no_repeat_ngram_size: int = recipe_key(0, "Decoding: never repeat an n-gram of this many tokens (0 = off).", min=0)
    steps: int | None = recipe_key(
        None,
        "Score the held-out pairs (eval.subset of them) every N optimizer steps and at the last one, while "
        "training: reward accuracy, loss and margin, the numbers dpo-recipe eval gives for that step's adapter. "
        "Logged to the progress bar, train_log.jsonl, the trackers, metrics.json and the plots; the base's half "
        "is scored once (and kept in the base cache). null: only at the end. Objective dpo only.",
        min=1,
    )
    subset: int | None = recipe_key(
        None,
        "How many held-out pairs eval.steps scores: a fixed sample chosen after a shuffle seeded by data.seed "
        "(with data.max_eval_pairs unset, the pairs dpo-recipe eval --max-pairs N scores); null: all. The "
        "evaluation at the end always scores all.",
        min=1,
    )
    judge: str | None = recipe_key(
        None,
        "Judge the held-out answers (the eval.num_generations questions the base and the tuned model answer) tuned "
        "against base, one comparison a question, with a judge named as judge.kind names one: rules, implicit, "
        "reward-model:PATH_OR_ID or openai:URL, its settings from the judge section. openai is asked both orders "
        "(a tie where they disagree); a scoring judge ties within 1e-6. Win rate (wins + ties / 2) / questions "
        "with a Wilson 95% interval, in the report, metrics.json and the card. null: no judging.",
    )


# TRL's OpenAIPairwiseJudge prompt (removed after TRL 1.0): the judge answers with the identifier "0" or "1"
PAIRWISE_PROMPT = '''I require a leaderboard for various large language models. I'll provide you with prompts given to \
these models and their corresponding outputs. Your task is to assess these responses, and select the model that \
produces the best output from a human perspective.

## Instruction

{{
    "instruction": """{prompt}""",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a \
unique model identifier.

{{
    {{
        "model_identifier": "0",
        "output": """{response0}"""
    }},
    {{
        "model_identifier": "1",
        "output": """{response1}"""
    }}
}}

## Task

Evaluate the models on the basis of the quality and relevance of their results, and select the model that generated \
the best result. Reply with the identifier of the best model. Our evaluation will only take into account the first \
character of your answer, so make sure it contains only one of the identifiers and nothing else (no quotation marks, \
no spaces, no new lines, ...).
'''


@dataclass
class JudgeSection:
    kind: str = recipe_key(
        "rules",
        "The judge of dpo-recipe pairs judge / iterate (--judge overrides it): rules (the answer checks as gates and a "
        "weighted score, offline), implicit (the sampled adapter's own DPO reward, beta x (log pi - log pi_ref), "
        "length-corrected), reward-model:PATH_OR_ID (a sequence-classification model with one label), or "
        "openai:URL (an OpenAI-compatible chat endpoint asked pairwise, both orders).",
    )
    gates: list[str] = recipe_key(
        ["japanese", "no_loop", "ends_sentence"],
        f"What a chosen answer must pass, whatever the judge: any of {', '.join(GATES)} (japanese: judge."
        "min_japanese_share; no_loop: repetition <= judge.max_repetition; length: judge.min_chars..max_chars). "
        "[] turns them off.",
    )
    rules: dict[str, float] = recipe_key(
        {"japanese_share": 1.0, "names_topic": 1.0, "repetition": 1.0, "ends_sentence": 1.0, "length": 0.5},
        f"The rules judge's soft score: a weight per answer check ({', '.join(RULE_WEIGHTS)}); the score is their "
        "weighted sum, each check in [0, 1] (repetition counts as 1 - repetition, length as 1 inside "
        "judge.min_chars..max_chars).",
    )
    min_margin: float = recipe_key(
        0.0,
        "A pair is kept only when its chosen answer's score beats the rejected one's by more than this (ties never "
        "pair); the pairs dropped are counted.",
        min=0.0,
    )
    min_japanese_share: float = recipe_key(
        0.5, "Gate japanese: the least Japanese share of an answer.", min=0.0, max=1.0
    )
    max_repetition: float = recipe_key(
        0.5, "Gate no_loop: the most repetition (characters in repeated 8-grams) of an answer.", min=0.0, max=1.0
    )
    min_chars: int = recipe_key(8, "Gate and rule length: the fewest characters of an answer.", min=0)
    max_chars: int = recipe_key(400, "Gate and rule length: the most characters of an answer.", min=1)
    length_correction: bool = recipe_key(
        True,
        "implicit: subtract alpha x tokens from each reward, alpha fitted (DICE) so that the mean token length of "
        "the chosen and rejected answers of the best-vs-worst pairs differ by as little as it can: the implicit "
        "reward favours long answers.",
    )
    batch_size: int = recipe_key(8, "implicit / reward-model: answers scored per forward pass.", min=1)
    prompt_template: str = recipe_key(
        PAIRWISE_PROMPT,
        "openai: the pairwise prompt, with {prompt}, {response0} and {response1} (TRL's OpenAIPairwiseJudge names; "
        "other braces doubled). The reply must start with 0 or 1.",
    )
    model: str | None = recipe_key(None, "openai: the model name sent to the endpoint (null: none is sent).")
    api_key_env: str | None = recipe_key(
        None,
        "openai: the environment variable that holds the API key (sent as a Bearer token, never printed or "
        "written). null: no key is sent.",
    )
    max_tokens: int = recipe_key(1, "openai: the reply's token budget (TRL's judge asked for 1).", min=1, max=4096)
    timeout_s: float = recipe_key(30.0, "openai: seconds to wait for one reply.", min_exclusive=0.0, max=3600.0)
    retries: int = recipe_key(
        3, "openai: tries after the first for a reply that times out, fails (5xx, 429) or is not 0 / 1.", min=0, max=20
    )
    retry_backoff_s: float = recipe_key(
        1.0, "openai: seconds before the first retry, doubled for each next one.", min=0.0, max=600.0
    )
    request_extra: dict[str, Any] = recipe_key(
        {},
        'openai: more fields of the request body, e.g. llama.cpp\'s {grammar: \'root ::= "0" | "1"\'} or '
        "vLLM's {guided_choice: ['0', '1']}, so a small judge can only answer 0 or 1.",
    )


@dataclass
class IterateSection:
    rounds: int = recipe_key(
        2, "On-policy rounds after round 0 (dpo-recipe iterate; --rounds overrides it).", min=1, max=50
    )
    replay: float = recipe_key(
        0.3,
        "Share of each round's training pairs that are the original training pairs (the rest are the round's judged "
        "pairs), mixed through data.sources; reproductions that replayed none lost their gain after round 1. Above "
        "0: the original source also carries round 0's held-out pairs into every round.",
        min_exclusive=0.0,
        max_exclusive=1.0,
    )
    reference: str = recipe_key(
        "first_model",
        "The DPO reference of round k: first_model (the model round 0 started from, RLHFlow's advice; held-out "
        "numbers stay comparable across rounds) or last_policy (round k-1's policy, as DICE and SPIN do).",
        choices=ROUND_REFERENCES,
    )
    num_generations: int = recipe_key(
        4, "TRL num_generations: answers sampled per prompt (dpo-recipe pairs sample --n).", min=2, max=64
    )
    temperature: float = recipe_key(0.8, "TRL temperature: sampling temperature.", min_exclusive=0.0, max=5.0)
    top_p: float = recipe_key(0.95, "TRL top_p: nucleus sampling's probability mass.", min_exclusive=0.0, max=1.0)
    max_completion_length: int = recipe_key(
        64, "TRL max_completion_length: the most tokens of a sampled answer.", min=1, max=32768
    )
    generation_batch_size: int = recipe_key(
        16, "TRL generation_batch_size: answers generated per generate call (whole prompts' worth).", min=1
    )
    max_prompts: int | None = recipe_key(
        None, "Sample at most N training prompts a round, chosen after a shuffle seeded by data.seed.", min=1
    )
    seed: int = recipe_key(0, "Sampling seed; round k samples with seed + k.")


@dataclass
class HubSection:
    push: bool = recipe_key(False, "Push the adapter to the Hub at the end of training.")
    repo_id: str | None = recipe_key(None, "Target repo, USER/NAME.")
    private: bool = recipe_key(False, "Create the repo private.")
    revision: str | None = recipe_key(None, "Branch to push to (default main).")
    license: str = recipe_key("apache-2.0", "License written into the model card.")


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    judge: JudgeSection = field(default_factory=JudgeSection)
    iterate: IterateSection = field(default_factory=IterateSection)
    hub: HubSection = field(default_factory=HubSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS: dict[str, type] = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Recipe)}


REQUIRED_SECTIONS = ("model",)
