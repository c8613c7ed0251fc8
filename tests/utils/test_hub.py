"""dpo_recipe.utils.hub: repo ids checked before any Hub call."""

from __future__ import annotations

import pytest

from dpo_recipe.utils.hub import HubError, checked_repo_id, writable_token


@pytest.mark.parametrize("bad", ["alice", "alice/a/b", "alice/-x", "alice/x..y", "../etc", "alice/" + "x" * 97, ""])
def test_an_invalid_repo_id_is_one_paragraph_naming_the_rule(bad: str) -> None:
    with pytest.raises(HubError, match=rf"--repo-id {bad!r} is not a Hub repo id: give USER/NAME"):
        checked_repo_id(bad)
    with pytest.raises(HubError, match="is not a Hub repo id"):  # before the token is even looked at
        writable_token(bad)


def test_a_valid_repo_id_passes() -> None:
    assert checked_repo_id("alice/gemma3-270m-ja_dpo.v2") == "alice/gemma3-270m-ja_dpo.v2"
