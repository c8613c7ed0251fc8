"""dpo_recipe.training.objectives (``base`` and ``objective_for``): one unit per objective, picked once; the run's
callbacks installed by one function for every trainer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO
from transformers.trainer_callback import ProgressCallback

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.training.callbacks import JsonlLogger, LiveMetricsProgress, StopOnSignal
from dpo_recipe.training.objectives import objective_for, objective_named
from dpo_recipe.training.objectives.base import with_run_callbacks


@pytest.mark.parametrize(
    ("recipe", "name", "unit", "config"),
    [
        ("tiny-ja", "dpo", "pairs", "DPOConfig"),
        ("tiny-ja-kto", "kto", "rows", "KTOConfig"),
        ("tiny-ja-sft", "sft", "rows", "SFTConfig"),
    ],
)
def test_the_recipe_picks_its_objective(recipe: str, name: str, unit: str, config: str, tmp_path: Path) -> None:
    objective = objective_for(load_recipe(recipe))
    assert (objective.name, objective.unit, objective.config_class().__name__) == (name, unit, config)
    assert type(objective_named(name)) is type(objective)
    args = objective.trainer_args(load_recipe(recipe), tmp_path)
    assert type(args).__name__ == config and args.output_dir == str(tmp_path / "checkpoints")
    assert objective.training_metrics([], [])["objective"] == name


def test_no_code_outside_the_objectives_and_the_recipe_checks_asks_which_objective_it_is() -> None:
    package = REPO / "dpo_recipe"
    asking = re.compile(r"objective\"?\)?\s*(==|!=)|\.objective\s+in\b")
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for path in package.rglob("*.py")
        if not path.is_relative_to(package / "training" / "objectives") and not path.is_relative_to(package / "config")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if asking.search(line)
    ]
    assert found == []


class _Trainer:
    """What with_run_callbacks touches of a transformers Trainer: its callbacks and its model."""

    def __init__(self) -> None:
        import torch

        self.model = torch.nn.Linear(2, 2)
        self.callbacks: list = [ProgressCallback()]

    def remove_callback(self, kind: type) -> None:
        self.callbacks = [c for c in self.callbacks if type(c) is not kind]

    def add_callback(self, callback: object) -> None:
        self.callbacks.append(callback)


def test_every_trainer_gets_the_log_the_clean_stop_the_totals_and_the_live_progress_bar(tmp_path: Path) -> None:
    from dpo_recipe.training.run_totals import RunTotals

    trainer = with_run_callbacks(_Trainer(), tmp_path)
    assert [type(c) for c in trainer.callbacks] == [JsonlLogger, StopOnSignal, RunTotals, LiveMetricsProgress]
    assert trainer.callbacks[0].path == tmp_path / "train_log.jsonl"
