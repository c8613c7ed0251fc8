"""dpo_recipe.evaluation.command: what `dpo-recipe eval` scores."""

from __future__ import annotations

from dpo_recipe.config.schema import DataSection
from dpo_recipe.evaluation.command import held_out_data


def test_data_replaces_the_recorded_source_or_mixture_whole() -> None:
    recorded = DataSection(sources=[{"source": "builtin:ja-preferences"}], revision="abc123", max_train_pairs=8)
    mine = held_out_data(recorded, "my.jsonl", "test", 4)
    assert (mine.source, mine.sources, mine.revision) == ("my.jsonl", [], None)
    assert (mine.test_split, mine.max_train_pairs, mine.max_eval_pairs) == ("test", None, 4)
    kept = held_out_data(recorded, None, "validation", None)
    assert (kept.sources, kept.revision, kept.test_split) == (
        [{"source": "builtin:ja-preferences"}],
        "abc123",
        "validation",
    )
