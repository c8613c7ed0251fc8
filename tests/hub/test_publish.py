"""`dpo-recipe data push` and `dpo-recipe push` against the local Hub, read back with the real clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FORM_FIXTURES, PUBLISHED_FORMS, READ, WRITE, invoke, run_client, tiny_overrides
from safetensors.torch import load_file

from dpo_recipe.train import run
from dpo_recipe.utils.hub import HubError, http_status


@pytest.fixture(scope="module")
def finished(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("push") / "adapter"
    run("tiny-ja", tiny_overrides(tiny_model, "data.max_train_pairs=16", "data.max_eval_pairs=8"), output_dir=str(out))
    return out


def test_dataset_push_and_load_dataset_round_trip(hub, runner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    invoke(runner, "data", "generate", "--out", data, "--num-pairs", 120, "--tokenizer", "none")
    result = invoke(runner, "data", "push", data, "--repo-id", "alice/ja-prefs")
    assert result.exit_code == 0, result.output
    assert "Pushed 120 rows as given (120 pairs in the standard form) to" in result.output
    assert WRITE not in result.output
    remote = run_client("""
        import json
        import datasets
        from huggingface_hub import DatasetCard
        ds = datasets.load_dataset("alice/ja-prefs")
        card = DatasetCard.load("alice/ja-prefs", repo_type="dataset")
        print(json.dumps({"train": ds["train"].to_list(), "test": ds["test"].to_list(),
                          "language": card.data.language, "text": card.text}, ensure_ascii=False))
    """)
    import datasets

    local = datasets.load_from_disk(str(data))
    assert remote["train"] == local["train"].to_list() and remote["test"] == local["test"].to_list()
    assert remote["language"] == ["ja"] and "## Rejection types" in remote["text"]


def test_every_published_form_is_pushed_as_given_and_read_back_from_the_hub(hub, runner) -> None:
    from dpo_recipe.config.loader import data_section
    from dpo_recipe.data.sources import read_file, read_source, standard_splits

    for name, (settings, note) in PUBLISHED_FORMS.items():
        source = FORM_FIXTURES / f"{name}.jsonl"
        keys = [arg for setting in settings for arg in ("--set", setting)]
        result = invoke(runner, "data", "push", source, "--repo-id", f"alice/{name}", *keys)
        assert result.exit_code == 0, result.output
        rows = len(read_file(source))
        assert (
            note in result.output and f"Pushed {rows} rows as given (6 pairs in the standard form) to" in result.output
        )
        section = data_section({"source": f"alice/{name}"}, settings)
        from_hub = read_source(section.source)
        assert from_hub == {"train": read_file(source)}
        converted, report = standard_splits(from_hub, section)
        assert converted == {"train": read_file(FORM_FIXTURES / f"{name}.standard.jsonl")} and not report.findings


def test_unpaired_data_is_pushed_as_given_and_read_back_unpaired(hub, runner) -> None:
    from dpo_recipe.config.schema import DataSection
    from dpo_recipe.data.sources import read_file, read_source, standard_splits

    source = FORM_FIXTURES / "unpaired.jsonl"
    result = invoke(runner, "data", "push", source, "--repo-id", "alice/unpaired")
    assert result.exit_code == 0, result.output
    assert "form: unpaired, text (detected)" in result.output and "Pushed 7 rows as given (7 unpaired rows) to" in (
        result.output
    )
    from_hub = read_source("alice/unpaired")
    assert from_hub == {"train": read_file(source)}
    converted, report = standard_splits(from_hub, DataSection(source="alice/unpaired"))
    assert converted == {"train": read_file(FORM_FIXTURES / "unpaired.standard.jsonl")} and not report.errors


def test_adapter_push_reloads_with_peft_from_the_hub(hub, runner, finished: Path, tiny_model: Path) -> None:
    result = invoke(runner, "push", finished, "--repo-id", "alice/tiny-dpo", "--commit-message", "first adapter")
    assert result.exit_code == 0, result.output
    assert "Pushed and verified" in result.output and "alice/tiny-dpo" in result.output
    remote = run_client(f"""
        import json
        import torch
        from huggingface_hub import HfApi, ModelCard
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        ids = torch.tensor([[5, 17, 42, 99, 7]])
        with torch.no_grad():
            hub_logits = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tiny_model)!r}),
                                                   "alice/tiny-dpo")(ids).logits
            local_logits = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tiny_model)!r}),
                                                     {str(finished)!r})(ids).logits
        card = ModelCard.load("alice/tiny-dpo")
        files = sorted(HfApi().list_repo_files("alice/tiny-dpo"))
        usage = 'PeftModel.from_pretrained(base, "alice/tiny-dpo")' in card.text
        print(json.dumps({{"equal": bool(torch.equal(hub_logits, local_logits)), "files": files,
                          "library": card.data.library_name, "usage": usage}}))
    """)
    assert remote["equal"] is True
    assert remote["library"] == "peft" and remote["usage"] is True
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "recipe.yaml",
        "metrics.json",
        "README.md",
        "plots/loss.png",
        "tokenizer.json",
    } <= set(remote["files"])
    assert not [f for f in remote["files"] if f.endswith((".bin", ".pt")) or f.startswith("checkpoints/")]


def test_push_without_a_write_token_fails_before_uploading(hub, runner, finished: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", READ)
    result = invoke(runner, "push", finished, "--repo-id", "alice/never")
    assert result.exit_code == 1 and "cannot write to 'alice/never' (role: read)" in result.output
    assert READ not in result.output
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(Path(hub.store.root) / "no-login"))
    result = invoke(runner, "push", finished, "--repo-id", "alice/never")
    assert result.exit_code == 1 and "needs a Hugging Face token with write access" in result.output
    remote = run_client("""
        import json
        from huggingface_hub import HfApi
        print(json.dumps({"exists": HfApi().repo_exists("alice/never", token="hf_alice_write")}))
    """)
    assert remote["exists"] is False


def test_private_adapter_is_invisible_without_a_token(hub, runner, finished: Path, monkeypatch, record) -> None:
    with record.case("security"):
        _private_repo_is_invisible(runner, finished, monkeypatch)


def _private_repo_is_invisible(runner, finished: Path, monkeypatch) -> None:
    assert invoke(runner, "push", finished, "--repo-id", "alice/secret", "--private").exit_code == 0
    monkeypatch.delenv("HF_TOKEN")
    remote = run_client("""
        import json
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError
        try:
            HfApi().model_info("alice/secret", token=False)
            seen = True
        except RepositoryNotFoundError:
            seen = False
        print(json.dumps({"seen": seen, "owner": HfApi().model_info("alice/secret", token="hf_alice_write").id}))
    """)
    assert remote == {"seen": False, "owner": "alice/secret"}


def test_no_file_or_output_holds_the_token(hub, runner, finished: Path) -> None:
    result = invoke(runner, "push", finished, "--repo-id", "alice/grep")
    assert result.exit_code == 0
    assert WRITE not in result.output
    for path in finished.rglob("*"):
        if path.is_file():
            assert WRITE.encode() not in path.read_bytes(), path
    report = json.loads((finished / "metrics.json").read_text())
    assert not [key for key in _keys(report) if key.lower() == "token" or key.lower().endswith("_token")]


def _keys(tree: object) -> list[str]:
    """Every key in a JSON tree: a credential would sit under one named `token` or `*_token`."""
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in [key, *_keys(value)]]
    if isinstance(tree, list):
        return [k for item in tree for k in _keys(item)]
    return []


def test_training_pushes_at_the_end_and_checks_the_token_first(
    hub, tiny_model: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    settings = tiny_overrides(
        tiny_model,
        "data.max_train_pairs=8",
        "data.max_eval_pairs=4",
        "hub.push=true",
        "hub.repo_id=alice/from-training",
    )
    monkeypatch.setenv("HF_TOKEN", READ)
    with pytest.raises(HubError, match="cannot write to 'alice/from-training'"):
        run("tiny-ja", settings, output_dir=str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()  # refused before any data, model or output dir
    monkeypatch.setenv("HF_TOKEN", WRITE)
    run("tiny-ja", settings, output_dir=str(tmp_path / "pushed"))
    assert "Pushed and verified" in capsys.readouterr().out
    remote = run_client("""
        import json
        from huggingface_hub import HfApi
        print(json.dumps({"files": HfApi().list_repo_files("alice/from-training")}))
    """)
    assert "adapter_model.safetensors" in remote["files"]


def test_card_pins_the_dataset_commit_and_from_hub_repeats_the_run(hub, runner, tiny_model: Path, tmp_path: Path):
    """Dataset on the Hub → train + push → the dataset moves on → --from-hub trains the same adapter again."""
    from huggingface_hub import HfApi, ModelCard

    data = tmp_path / "data"
    invoke(runner, "data", "generate", "--out", data, "--num-pairs", 120, "--tokenizer", "none")
    assert invoke(runner, "data", "push", data, "--repo-id", "alice/prefs").exit_code == 0
    pinned = HfApi().dataset_info("alice/prefs").sha
    settings = tiny_overrides(
        tiny_model,
        "data.source=alice/prefs",
        "data.max_train_pairs=12",
        "data.max_eval_pairs=6",
        "hub.push=true",
        "hub.repo_id=alice/pinned",
    )
    first = run("tiny-ja", settings, output_dir=str(tmp_path / "first"))
    card = ModelCard.load("alice/pinned")
    card.validate()  # the local Hub checks metadata types and the model-index shape
    accuracy, margin = card.data.eval_results
    assert card.data.datasets == ["alice/prefs"] and card.data.base_model is None  # a local path is no Hub id
    assert accuracy.dataset_type == "alice/prefs" and accuracy.dataset_revision == pinned
    assert accuracy.metric_value == round(first["eval"]["overall"]["reward_accuracy"], 4)
    assert margin.metric_type == "reward_margin" and card.data.model_name == "pinned"

    moved = tmp_path / "moved"
    invoke(runner, "data", "generate", "--out", moved, "--num-pairs", 120, "--seed", 7, "--tokenizer", "none")
    assert invoke(runner, "data", "push", moved, "--repo-id", "alice/prefs").exit_code == 0
    assert HfApi().dataset_info("alice/prefs").sha != pinned

    # the recorded model is a path on the publisher's machine: a fetched recipe's local path is the user's to give
    refused = invoke(runner, "train", "--from-hub", "alice/pinned", "--output-dir", tmp_path / "again", "--dry-run")
    assert refused.exit_code != 0 and "model.name_or_path is a local path" in refused.output, refused.output
    mine = ["--set", f"model.name_or_path={tiny_model}"]
    result = invoke(
        runner, "train", "--from-hub", "alice/pinned", *mine, "--output-dir", tmp_path / "again", "--dry-run"
    )
    assert result.exit_code == 0 and "12" in result.output, result.output
    again = run(None, tiny_overrides(tiny_model), from_hub="alice/pinned", output_dir=str(tmp_path / "again"))
    recipes = [yaml.safe_load((tmp_path / name / "recipe.yaml").read_text()) for name in ("first", "again")]
    assert recipes[1]["data"]["revision"] == pinned and recipes[1]["hub"]["push"] is False
    assert recipes[1]["hub"]["repo_id"] is None  # where a repeated run goes is the user's to say, not the card's
    for recipe in recipes:
        del recipe["training"]["output_dir"], recipe["hub"]
    assert recipes[0] == recipes[1]
    weights = [load_file(tmp_path / name / "adapter_model.safetensors") for name in ("first", "again")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert again["eval"]["overall"] == first["eval"]["overall"]
    assert "--from-hub alice/pinned" in (tmp_path / "again" / "README.md").read_text()


def test_eval_scores_an_adapter_straight_from_the_hub(
    hub, runner, finished: Path, tiny_model: Path, tmp_path: Path
) -> None:
    assert invoke(runner, "push", finished, "--repo-id", "alice/to-score").exit_code == 0
    out = tmp_path / "report.json"
    # the recipe recorded a local base; from the Hub a local path is the user's to give (--base)
    result = invoke(runner, "eval", "--adapter", "alice/to-score", "--base", tiny_model, "--max-pairs", 8, "--out", out)
    assert result.exit_code == 0, result.output
    local = json.loads((finished / "metrics.json").read_text())["eval"]["overall"]
    remote = json.loads(out.read_text())["overall"]
    assert remote["pairs"] == local["pairs"] == 8
    assert remote["reward_accuracy"] == local["reward_accuracy"]
    assert remote["reward_margin"] == pytest.approx(local["reward_margin"], abs=1e-5)


def test_an_export_is_pushed_with_its_own_card_and_replaces_the_previous_export(
    hub, runner, finished: Path, tmp_path: Path
) -> None:
    from dpo_recipe.api import export

    gguf_dir, merged_dir = tmp_path / "tiny-gguf", tmp_path / "tiny-merged"
    export(finished, gguf_dir, quant="q8_0")
    export(finished, merged_dir, fmt="safetensors")
    (gguf_dir / ".env").write_text("HF_TOKEN=hf_secret")  # files the user left in the folder stay behind
    (gguf_dir / "id_rsa").write_text("PRIVATE KEY")
    (gguf_dir / "notes.gguf").symlink_to(gguf_dir / "id_rsa")  # a link with a weights name is no export file
    result = invoke(runner, "push", gguf_dir, "--repo-id", "alice/tiny-export")
    assert result.exit_code == 0, result.output
    assert "Pushed and verified 4 files" in result.output
    remote = run_client("""
        import json
        import gguf
        from huggingface_hub import HfApi, ModelCard, hf_hub_download
        reader = gguf.GGUFReader(hf_hub_download("alice/tiny-export", "model.gguf"))
        card = ModelCard.load("alice/tiny-export")
        print(json.dumps({"files": sorted(HfApi().list_repo_files("alice/tiny-export")),
                          "file_type": int(reader.fields["general.file_type"].contents()),
                          "library": card.data.library_name, "text": card.text}))
    """)
    assert remote["files"] == [".gitattributes", "Modelfile", "README.md", "export.json", "model.gguf"]
    assert remote["file_type"] == 7 and remote["library"] == "gguf"  # MOSTLY_Q8_0
    assert "hf download alice/tiny-export --local-dir tiny-gguf" in remote["text"]

    assert invoke(runner, "push", merged_dir, "--repo-id", "alice/tiny-export").exit_code == 0
    remote = run_client("""
        import json
        from huggingface_hub import HfApi
        print(json.dumps({"files": sorted(HfApi().list_repo_files("alice/tiny-export"))}))
    """)
    assert "model.gguf" not in remote["files"] and "Modelfile" not in remote["files"]  # one export per repo
    assert {"model.safetensors", "config.json", "tokenizer.json", "export.json"} <= set(remote["files"])


def test_from_hub_names_what_is_missing(hub, runner) -> None:
    result = invoke(runner, "train", "--from-hub", "alice/nothing-here")
    assert result.exit_code == 1 and "--from-hub alice/nothing-here: no such model repo" in result.output
    result = invoke(runner, "train", "--recipe", "tiny-ja", "--from-hub", "alice/x")
    assert result.exit_code == 2 and "argument --from-hub: not allowed with argument --recipe" in result.output


def test_http_status_is_read_from_hub_and_client_errors() -> None:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx2.Response(503, request=httpx2.Request("GET", "https://hub.invalid/api/models/a/b"))
    assert http_status(HfHubHTTPError("unavailable", response=response)) == 503
    assert http_status(httpx2.HTTPStatusError("gone", request=response.request, response=response)) == 503
    assert http_status(httpx2.ConnectError("refused")) is None  # no answer at all: no status
    assert http_status(ValueError("not an HTTP error")) is None


def test_a_push_sends_the_folders_own_files_only(finished: Path, tmp_path: Path) -> None:
    """A plots/ that is a link out of the folder, or a hard link to a file elsewhere, stays behind."""
    import os
    import shutil

    from dpo_recipe.hub.publish import adapter_files

    run, private = tmp_path / "run", tmp_path / "private"
    shutil.copytree(finished, run, symlinks=True)
    private.mkdir()
    (private / "family.png").write_bytes(b"\x89PNG private")
    shutil.rmtree(run / "plots")
    (run / "plots").symlink_to(private)
    os.link(private / "family.png", tmp_path / "elsewhere.png")
    (run / "eval_report.json").unlink()
    os.link(private / "family.png", run / "eval_report.json")  # a hard link under a name a push sends
    sent = adapter_files(run)
    assert not any(name.startswith("plots/") for name in sent) and "eval_report.json" not in sent
    assert {"adapter_model.safetensors", "metrics.json", "README.md"} <= set(sent)
