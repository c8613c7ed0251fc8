"""User errors: one ``Error:`` paragraph and the exit status a shell expects; bugs keep their traceback."""

from __future__ import annotations

import signal

import pytest

from dpo_recipe.errors import DataError, RunInterrupted, exit_on_user_error


def test_a_user_error_exits_2_with_one_paragraph(capsys) -> None:
    def entry(path: str) -> None:
        raise DataError(f"{path}, line 3: not valid JSON. Fix or remove the line.")

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(entry, "pairs.jsonl")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "Error: pairs.jsonl, line 3: not valid JSON. Fix or remove the line.\n"
    assert captured.out == ""


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_exits_like_the_shell_reports_the_signal(signum, status, capsys) -> None:
    def entry() -> None:
        raise RunInterrupted("Stopped at step 8; resume with --resume.", signum)

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(entry)
    assert exit_info.value.code == status
    assert capsys.readouterr().err == "Error: Stopped at step 8; resume with --resume.\n"


def test_results_pass_through_and_bugs_keep_their_traceback() -> None:
    assert exit_on_user_error(lambda a, *, b: a + b, 2, b=3) == 5
    with pytest.raises(ZeroDivisionError):
        exit_on_user_error(lambda: 1 / 0)
