"""``dpo-recipe pairs sample``: N answers per training prompt from the current policy, for a judge to rank.

The policy is an adapter a run wrote (``--adapter RUN``, on the base its recipe recorded) or a recipe's own
starting model (``--recipe R``: the base, with ``model.init_adapter`` merged when it names one). Prompts are the
training prompts of any data source the recipe accepts (``data.prompts.training_prompts``: never a held-out
one), rendered as training shows them (``answers.prompt_text``: the chat template for messages). Answers are
sampled with temperature and top-p (``answers.sampled_batch``), whole prompts per ``generate`` call.

A sample is resumable and written whole: each batch's answers are appended to ``OUT.partial`` as they come,
after a first line holding the settings; Ctrl-C (or SIGTERM) stops with that file intact, and the same command
goes on after the last whole batch. Each batch is seeded from the seed and its first prompt's index, so a
resumed sample is the sample an uninterrupted run writes. ``OUT`` itself appears only when every prompt is
answered, renamed into place from a temporary file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpo_recipe.config.coercion import build_section
from dpo_recipe.config.schema import IterateSection, Recipe
from dpo_recipe.data.prompts import Prompts, training_prompts
from dpo_recipe.data.sources import checked_out, prompt_key
from dpo_recipe.errors import DataError, RunInterrupted
from dpo_recipe.training.run_dir import Terminated, stops_raise
from dpo_recipe.utils.files import write_file_atomically

COMPLETIONS = "completions"  # a prompt's sampled answers (TRL's name for generated answers)
SAMPLED_FROM = "sampled_from"  # each row: the policy and decoding that wrote its answers


@dataclass(frozen=True)
class Sampling:
    """How answers are sampled (the recipe's ``iterate`` keys, or the command's options)."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    prompts_per_call: int
    seed: int

    @classmethod
    def from_recipe(cls, recipe: Recipe, **given: Any) -> Sampling:
        """The recipe's ``iterate`` keys, with the options given (not None) in their place."""
        it = recipe.iterate
        values = {
            "n": it.num_generations,
            "temperature": it.temperature,
            "top_p": it.top_p,
            "max_new_tokens": it.max_completion_length,
            "prompts_per_call": None,
            "seed": it.seed,
            **{k: v for k, v in given.items() if v is not None},
        }
        if values["n"] < 2:
            raise DataError(
                f"--n {values['n']}: a judge ranks a prompt's answers against each other, so each prompt needs at "
                "least 2 (4 is usual)."
            )
        given_keys = {"n": "num_generations", "temperature": "temperature", "top_p": "top_p"}
        given_keys["max_new_tokens"] = "max_completion_length"
        problems: list[str] = []  # the options within the bounds the recipe's keys have
        build_section(IterateSection, "iterate", {key: values[name] for name, key in given_keys.items()}, problems)
        if problems:
            raise DataError(f"{'; '.join(problems)} (the options --n, --temperature, --top-p, --max-new-tokens).")
        if values["prompts_per_call"] is None:
            values["prompts_per_call"] = max(1, it.generation_batch_size // values["n"])
        return cls(**values)


@dataclass
class SampleResult:
    out: Path
    prompts: int
    answers: int
    resumed_from: int  # prompts already answered in OUT.partial when this run started
    notes: list[str]


def partial_path(out: Path) -> Path:
    """Where a stopped ``pairs sample`` / ``pairs judge`` keeps its work: beside ``out``, which must name a file."""
    if not out.name:  # "", "." or "/" (the API's out is not checked by click; an unset variable gives "")
        raise DataError(f"--out {str(out)!r} names no file (empty, '.' or a root); name the file to write.")
    return out.with_name(out.name + ".partial")


def read_samples(path: Path) -> list[dict[str, Any]]:
    """A samples file's rows, each checked to hold a prompt and its answers as ``pairs judge`` needs them."""
    from dpo_recipe.data.sources import read_file

    if not path.is_file():  # the CLI's argument is checked by click; the API's is not
        raise DataError(f"{path}: no such samples file. Give the file 'dpo-recipe pairs sample' wrote.")
    rows = read_file(path)
    for number, row in enumerate(rows, 1):
        answers, prompt = row.get(COMPLETIONS), row.get("prompt")
        chat = isinstance(prompt, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt
        )
        if not (isinstance(prompt, str) or chat) or not prompt:
            raise DataError(
                f"{path}, row {number}: the prompt is not text or chat messages ({type(prompt).__name__}). Give the "
                "file pairs sample wrote."
            )
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(
                f"{path}, row {number}: not a row of 'dpo-recipe pairs sample' (a prompt and a {COMPLETIONS} list "
                "of answer texts). Give the file pairs sample wrote."
            )
    return rows


def sample(
    model: Any,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    settings: Sampling,
    out: Path,
    sampled_from: dict[str, Any],
    *,
    progress: bool = True,
) -> SampleResult:
    """Answer every prompt ``settings.n`` times into ``out`` (see the module docstring), resuming ``out.partial``."""
    import torch
    from tqdm.auto import tqdm

    from dpo_recipe.evaluation.answers import prompt_text, sampled_batch

    header = {
        "settings": asdict(settings),
        SAMPLED_FROM: sampled_from,
        "prompts": hashlib.sha256("\n".join(prompt_key(p["prompt"]) for p in prompts).encode()).hexdigest(),
    }
    journal = partial_path(out)
    refuse_link(journal)
    done = _resumed(journal, header)
    if not done:
        journal.unlink(missing_ok=True)
        _append(journal, json.dumps(header, ensure_ascii=False) + "\n")
    resumed_from = sum(len(rows) for rows in done.values())
    origin = {**sampled_from, **{k: v for k, v in asdict(settings).items() if k != "prompts_per_call"}}
    model.eval()
    step = settings.prompts_per_call
    starts = [s for s in range(0, len(prompts), step) if s not in done]
    try:
        with (
            stops_raise(),
            tqdm(total=len(prompts), initial=resumed_from, desc="Sampling", disable=not progress) as bar,
        ):
            for start in starts:
                chunk = prompts[start : start + step]
                # the same answers, resumed or not; any integer seed (a negative or 20-digit --seed) within the
                # 64 bits torch's generator takes
                torch.manual_seed((settings.seed * 1_000_003 + start) % 2**64)
                texts = [prompt_text(tokenizer, row["prompt"]) for row in chunk]
                answers = sampled_batch(
                    model,
                    tokenizer,
                    texts,
                    settings.max_new_tokens,
                    num_return_sequences=settings.n,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                )
                lines = [
                    json.dumps(
                        {"start": start, "row": {**row, COMPLETIONS: got, SAMPLED_FROM: origin}}, ensure_ascii=False
                    )
                    for row, got in zip(chunk, answers, strict=True)
                ]
                _append(journal, "".join(line + "\n" for line in lines))  # one write a batch: whole ones resume
                done[start] = [json.loads(line)["row"] for line in lines]
                bar.update(len(chunk))
    except (KeyboardInterrupt, Terminated) as stop:
        signum = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
        answered = sum(len(rows) for rows in done.values())
        raise RunInterrupted(
            f"Sampling stopped on {signum.name} after {answered} of {len(prompts)} prompts; their answers are kept in "
            f"{journal}. Run the same command again to go on from there.",
            signum,
        ) from None
    rows = [row for start in sorted(done) for row in done[start]]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    try:
        write_file_atomically(out, lambda staging: staging.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise DataError(
            f"--out {out} could not be written ({exc.strerror or exc}); nothing was written there, and every answer "
            f"is kept in {journal}: free the disk and run the same command again."
        ) from None
    journal.unlink(missing_ok=True)
    return SampleResult(out, len(rows), len(rows) * settings.n, resumed_from, [])


def refuse_link(journal: Path) -> None:
    """A journal is written beside its output, never through a link someone put there."""
    if journal.is_symlink():
        raise DataError(f"{journal} is a symbolic link; a journal is never written through one. Remove it.")


def _append(journal: Path, text: str) -> None:
    """``text`` added to ``journal``; a full or read-only disk stops the sample with what it has kept."""
    try:
        with journal.open("a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise DataError(
            f"{journal} could not be written ({exc.strerror or exc}); the batches before this one are kept: free the "
            "disk and run the same command again to go on."
        ) from None


def _resumed(journal: Path, header: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """The batches ``journal`` holds (first prompt index -> rows), when it was written with these settings."""
    if not journal.is_file():
        return {}
    lines = journal.read_text(encoding="utf-8").split("\n")
    try:
        written = json.loads(lines[0])
    except ValueError:
        written = None
    if written != json.loads(json.dumps(header, ensure_ascii=False)):
        raise DataError(
            f"{journal} holds part of a sample with other settings, policy or prompts than this command's. Run the "
            "command that wrote it again to finish it, or pass --overwrite to start this one over."
        )
    done: dict[int, list[dict[str, Any]]] = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except ValueError:  # the end of a batch a kill cut short: that batch runs again
            break
        done.setdefault(entry["start"], []).append(entry["row"])
    return done


def checked_sample_out(out: Path, prompts_source: str | None, *, overwrite: bool) -> Path:
    """``--out`` checked before any weights load: not the prompts file, not a finished sample without
    ``--overwrite`` (a partial one is resumed; ``--overwrite`` starts it over)."""
    journal = partial_path(out.expanduser())
    resuming = journal.is_file() and not overwrite
    out = checked_out(out, prompts_source or "", overwrite=overwrite or resuming)
    if overwrite:
        journal.unlink(missing_ok=True)
    return out


def sample_prompts(recipe: Recipe, source: str | None, limit: int | None, *, own_recipe: bool) -> Prompts:
    """The training prompts to sample (``data.prompts.training_prompts``); ``own_recipe`` False (a downloaded
    adapter's recorded recipe) reads only ``source``, never a path that recipe names."""
    if not own_recipe and source is not None:
        data = dataclasses.replace(recipe.data, source=source, sources=[], revision=None)
        return training_prompts(data, None, limit)
    return training_prompts(recipe.data, source, limit)


def run_sample(
    out: Path,
    *,
    adapter: str | None = None,
    recipe: str | None = None,
    overrides: tuple[str, ...] = (),
    prompts: str | None = None,
    max_prompts: int | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    **options: Any,
) -> SampleResult:
    """``dpo-recipe pairs sample``: everything checked (policy, recipe, settings, ``--out``, prompts) before the
    weights load; ``options``: ``Sampling`` fields given on the command line (None: the recipe's), ``max_prompts``
    (default ``iterate.max_prompts``) a seeded choice of that many prompts."""
    from dpo_recipe.config.trust import RUN_MARKER
    from dpo_recipe.models.adapters import adapter_base, load_adapter_model, load_base
    from dpo_recipe.models.loading import load_tokenizer

    if (adapter is None) == (recipe is None):
        raise DataError("Give the policy to sample: --adapter RUN (a trained adapter) or --recipe R (its base model).")
    if adapter is not None:
        if overrides:
            raise DataError(
                "--set applies to a recipe (--recipe R); an adapter's recipe is the one it was trained with. Give "
                "the sampling settings as options (--n, --temperature, --top-p, --seed, --max-new-tokens)."
            )
        adapter_dir, policy_recipe, model_section = adapter_base(
            adapter, trust_remote_code=trust_remote_code, data=prompts
        )
        own = (Path(adapter).expanduser() / RUN_MARKER).is_file()
        sampled_from = {"adapter": str(adapter_dir.resolve()), "base": model_section.name_or_path}
    else:
        from dpo_recipe.config.loader import load_recipe

        extra = ("model.trust_remote_code=true",) if trust_remote_code else ()
        policy_recipe, own = load_recipe(str(recipe), [*overrides, *extra]), True
        model_section = policy_recipe.model
        sampled_from = {"adapter": None, "recipe": str(recipe), "base": model_section.name_or_path}
    settings = Sampling.from_recipe(policy_recipe, **options)
    out = checked_sample_out(out, prompts, overwrite=overwrite)
    limit = max_prompts or policy_recipe.iterate.max_prompts
    picked = sample_prompts(policy_recipe, prompts, limit, own_recipe=own)
    if adapter is not None:
        model, tokenizer = load_adapter_model(adapter_dir, model_section)
    else:
        model, tokenizer = load_base(model_section), load_tokenizer(model_section)
    result = sample(model, tokenizer, picked.rows, settings, out, sampled_from)
    result.notes = picked.notes
    return result
