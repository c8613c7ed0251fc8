"""dpo_recipe.training.run_context: one run's flags, the commands it renders, and --from-hub's implied settings."""

from __future__ import annotations

import pytest

from dpo_recipe.config.loader import resolve_recipe_path
from dpo_recipe.errors import RecipeError
from dpo_recipe.train import build_parser
from dpo_recipe.training.run_context import RunContext


def test_commands_repeat_and_resume_the_run() -> None:
    context = RunContext(recipe="tiny-ja", overrides=("training.seed=3", "data.source=my data.jsonl"))
    assert context.recipe_name == "tiny-ja"
    assert context.rerun_command() == (
        "accelerate launch -m dpo_recipe.train --recipe tiny-ja --set training.seed=3 --set 'data.source=my data.jsonl'"
    )
    assert context.resume_command("outputs/x") == context.rerun_command() + " --output-dir outputs/x --resume"
    hub = RunContext(from_hub="alice/run@v2")
    assert hub.recipe_name == "alice/run@v2"
    assert hub.rerun_command() == "accelerate launch -m dpo_recipe.train --from-hub alice/run@v2"


def test_the_parsers_namespace_becomes_a_context() -> None:
    args = build_parser().parse_args(["--recipe", "r", "--set", "a.b=1", "--set", "c.d=2", "--resume", "--dry-run"])
    context = RunContext.from_args(args)
    assert context == RunContext(recipe="r", overrides=("a.b=1", "c.d=2"), resume=True, dry_run=True)


def test_contradictions_are_refused_when_the_context_is_made() -> None:
    with pytest.raises(RecipeError, match="--resume and --overwrite contradict each other"):
        RunContext(recipe="tiny-ja", resume=True, overwrite=True)
    with pytest.raises(RecipeError, match="exactly one of"):
        RunContext(recipe="tiny-ja", from_hub="alice/run")
    with pytest.raises(RecipeError, match="exactly one of"):
        RunContext()


def test_from_hub_implies_no_push_and_an_output_dir_named_after_the_repo(monkeypatch) -> None:
    asked = []

    def downloaded(repo: str):
        asked.append(repo)
        return resolve_recipe_path("tiny-ja")

    monkeypatch.setattr("dpo_recipe.training.run_context.recipe_from_hub", downloaded)
    recipe = RunContext(from_hub="alice/tuned@v2").load_recipe()
    assert asked == ["alice/tuned@v2"]
    assert recipe.hub.push is False and recipe.training.output_dir == "outputs/tuned"
    mine = RunContext(from_hub="alice/tuned", overrides=("training.seed=5",), output_dir="elsewhere").load_recipe()
    assert mine.training.output_dir == "elsewhere" and mine.training.seed == 5
    local = RunContext(recipe="tiny-ja", output_dir="o").load_recipe()
    assert local.training.output_dir == "o"


def test_a_fetched_recipe_never_chooses_where_the_users_push_or_curves_go(monkeypatch, tmp_path) -> None:
    """A stranger's recipe naming the user's own repo, branch and privacy: none of it is kept; the user who turns
    push on names the repo themselves."""
    recipe = tmp_path / "recipe.yaml"
    text = resolve_recipe_path("tiny-ja").read_text()
    hub = "hub:\n  push: true\n  repo_id: alice/precious\n  revision: main\n  private: false\n"
    recipe.write_text(text.replace("training:\n", "training:\n  report_to: [wandb]\n  tensorboard: true\n") + hub)
    monkeypatch.setattr("dpo_recipe.training.run_context.recipe_from_hub", lambda repo: recipe)
    fetched = RunContext(from_hub="bob/x").load_recipe()
    assert (fetched.hub.push, fetched.hub.repo_id, fetched.hub.revision, fetched.hub.private) == (
        False,
        None,
        None,
        False,
    )
    assert (fetched.training.report_to, fetched.training.tensorboard) == ([], False)  # no trackers of theirs
    assert RunContext(
        from_hub="bob/x", overrides=("training.report_to=[trackio]",)
    ).load_recipe().training.report_to == ["trackio"]
    with pytest.raises(RecipeError, match="hub.repo_id: required when hub.push is true"):
        RunContext(from_hub="bob/x", overrides=("hub.push=true",)).load_recipe()
    mine = RunContext(from_hub="bob/x", overrides=("hub.push=true", "hub.repo_id=alice/mine")).load_recipe()
    assert mine.hub.repo_id == "alice/mine"


@pytest.mark.parametrize("repo", ["/etc/passwd", "bob/x/y", "../bob/x", "https://huggingface.co/bob/x", "bob"])
def test_from_hub_takes_a_repo_id_only(repo: str) -> None:
    from dpo_recipe.utils.hub import HubError

    with pytest.raises(HubError, match=f"--from-hub '{repo}' is not a Hub repo id: give USER/NAME"):
        RunContext(from_hub=repo).load_recipe()


def test_an_empty_output_dir_is_refused() -> None:
    with pytest.raises(RecipeError, match="--output-dir is empty"):
        RunContext(recipe="tiny-ja", output_dir="")


def test_a_chain_of_recipes_is_repeated_whole_and_starts_from_a_recipe() -> None:
    args = build_parser().parse_args(["--recipe", "tiny-ja-sft", "--then", "tiny-ja", "--set", "a.b=1"])
    context = RunContext.from_args(args)
    assert context == RunContext(recipe="tiny-ja-sft", then=("tiny-ja",), overrides=("a.b=1",))
    assert context.rerun_command() == (
        "accelerate launch -m dpo_recipe.train --recipe tiny-ja-sft --then tiny-ja --set a.b=1"
    )
    with pytest.raises(RecipeError, match="--then chains recipes you name: start the chain with --recipe"):
        RunContext(from_hub="alice/run", then=("tiny-ja",))


def test_a_fetched_recipe_never_sends_the_held_out_answers_or_a_key_to_its_judge(monkeypatch, tmp_path) -> None:
    """A stranger's eval.judge (their endpoint) and judge.api_key_env (a variable of the user's, whose value would
    go to it as a key) are not kept; a judge the user names themselves is."""
    recipe = tmp_path / "recipe.yaml"
    judge = "judge:\n  api_key_env: HF_TOKEN\n"
    text = (
        resolve_recipe_path("tiny-ja").read_text().replace("eval:\n", "eval:\n  judge: openai:http://evil.example/v1\n")
    )
    recipe.write_text(text + judge)
    monkeypatch.setattr("dpo_recipe.training.run_context.recipe_from_hub", lambda repo: recipe)
    fetched = RunContext(from_hub="bob/x").load_recipe()
    assert (fetched.eval.judge, fetched.judge.api_key_env) == (None, None)
    mine = RunContext(from_hub="bob/x", overrides=("eval.judge=rules",)).load_recipe()
    assert (mine.eval.judge, mine.judge.api_key_env) == ("rules", None)
