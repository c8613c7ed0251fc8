"""What one ``dpo_recipe.train`` invocation asked for, in one value instead of loose flag lists.

The recipe source (a recipe name or path, or a pushed run on the Hub), the ``--set`` items and the
output-directory flags travel together from the command line (or the Python API) to the places that
need them: loading the recipe, the resume hint of an interrupted run, and the model card's name and
reproduce command. The context renders those commands itself, so they always match the flags that
``dpo_recipe.train`` accepts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from dpo_recipe.config.loader import load_recipe, resolve_recipe_path
from dpo_recipe.config.schema import Recipe
from dpo_recipe.config.stages import Stage, read_stages, with_user_settings
from dpo_recipe.config.trust import TRUST_REMOTE_CODE_FLAG, FetchedRecipe, refuse_untrusted, user_keys
from dpo_recipe.errors import RecipeError
from dpo_recipe.training.launch import launch_command
from dpo_recipe.utils.hub import recipe_from_hub

TRAIN_MODULE = "dpo_recipe.train"
RESUME_AND_OVERWRITE = "--resume and --overwrite contradict each other: resume continues a run, overwrite starts over."


@dataclass(frozen=True)
class RunContext:
    """One training run's flags. Exactly one of ``recipe`` (packaged name or YAML path) and ``from_hub``
    (``USER/NAME[@REVISION]`` of an adapter pushed by dpo-recipe) is set."""

    recipe: str | None = None
    from_hub: str | None = None
    overrides: tuple[str, ...] = ()
    output_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    trust_remote_code: bool = False  # --trust-remote-code: the user allows the model repo's own code
    then: tuple[str, ...] = ()  # --then: recipes trained after this one, each from the adapter before it

    def __post_init__(self) -> None:
        if (self.recipe is None) == (self.from_hub is None):
            raise RecipeError("Give exactly one of a recipe (--recipe NAME_OR_PATH) and --from-hub USER/NAME.")
        if self.resume and self.overwrite:
            raise RecipeError(RESUME_AND_OVERWRITE)
        if self.output_dir is not None and not str(self.output_dir).strip():
            raise RecipeError("--output-dir is empty (an unset variable?); name the folder the run should write.")
        if self.then and self.from_hub:
            raise RecipeError("--then chains recipes you name: start the chain with --recipe, not --from-hub.")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunContext:
        """From ``dpo_recipe.train.build_parser``'s namespace (extra attributes, e.g. launcher options, are ignored)."""
        return cls(
            recipe=args.recipe,
            from_hub=args.from_hub,
            overrides=tuple(args.overrides),
            output_dir=args.output_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            trust_remote_code=args.trust_remote_code,
            then=tuple(getattr(args, "then", None) or ()),
        )

    def stages(self) -> tuple[list[Stage], str | None] | None:
        """``(the stages, the chain's own output_dir)`` when this run is a chain (a ``stages:`` recipe file,
        ``--then``), else None. Each stage's ``--set`` items are its own and then the user's."""
        listed = read_stages(resolve_recipe_path(self.recipe)) if self.recipe else None
        if listed is None and not self.then:
            return None
        stages = list(listed.stages) if listed else [Stage(str(self.recipe))]
        stages += [Stage(name) for name in self.then]
        stages = [Stage(stage.recipe, with_user_settings(stage, self.overrides)) for stage in stages]
        return stages, listed.output_dir if listed else None

    @property
    def recipe_name(self) -> str:
        """What the model card calls the recipe: the packaged name or path, or the Hub run it repeats."""
        return self.from_hub or str(self.recipe)

    def load_recipe(self) -> Recipe:
        """The validated recipe with ``--set`` items, ``--output-dir`` and ``--trust-remote-code`` applied.

        ``--from-hub`` reads the pushed run's recipe.yaml (a download) and implies ``hub.push=false`` (no
        repo id, branch or privacy of the publisher's), no trackers (``training.report_to``), no judge of the
        held-out answers (``eval.judge``, ``judge.api_key_env``) and ``training.output_dir=outputs/NAME`` unless
        the user sets those keys. That file was written
        by someone else: it passes ``config.trust`` (no remote code, no local paths unless the user gives
        them) before anything else reads it."""
        user_settings = [*self.overrides, *([f"training.output_dir={self.output_dir}"] if self.output_dir else [])]
        if self.trust_remote_code:
            user_settings.append("model.trust_remote_code=true")
        if self.from_hub is None:
            return load_recipe(str(self.recipe), user_settings)
        repo_name = self.from_hub.split("@")[0].split("/")[-1]
        # where the run goes is the user's to say: not the publisher's folder, push switch, repo or branch, nor
        # the trackers its curves and config are sent to (W&B's servers)
        implied = [
            "hub.push=false",
            "hub.repo_id=null",
            "hub.revision=null",
            "hub.private=false",
            f"training.output_dir=outputs/{repo_name}",
            "training.report_to=[]",
            "training.tensorboard=false",
            # nor the judge its held-out answers go to (an endpoint of the publisher's choosing), or the
            # environment variable whose value is sent to it as a key
            "eval.judge=null",
            "judge.api_key_env=null",
        ]
        given = user_keys(user_settings)
        settings = [item for item in implied if item.partition("=")[0] not in given] + user_settings
        recipe = load_recipe(str(recipe_from_hub(self.from_hub)), settings)
        fetched = FetchedRecipe(f"--from-hub {self.from_hub}", given, trust_remote_code=self.trust_remote_code)
        refuse_untrusted(recipe, fetched)
        return recipe

    def rerun_command(self) -> str:
        """The command that repeats this run (the model card's "Reproduce")."""
        return launch_command(TRAIN_MODULE, self._source_and_overrides())

    def resume_command(self, output_dir: str | Path) -> str:
        """The command that continues this run in ``output_dir`` from its newest checkpoint."""
        return launch_command(
            TRAIN_MODULE, [*self._source_and_overrides(), "--output-dir", str(output_dir), "--resume"]
        )

    def _source_and_overrides(self) -> list[str]:
        source = ["--from-hub", self.from_hub] if self.from_hub else ["--recipe", str(self.recipe)]
        trust = [TRUST_REMOTE_CODE_FLAG] if self.trust_remote_code else []
        then = [arg for name in self.then for arg in ("--then", name)]
        return [*source, *then, *trust, *[arg for item in self.overrides for arg in ("--set", item)]]
