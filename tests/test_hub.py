"""`dpo-recipe data push` and `dpo-recipe push` against the local Hub, read back with the real clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import READ, WRITE, invoke, run_client, tiny_overrides

from dpo_recipe.hub import HubError
from dpo_recipe.train import run


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
    assert "Pushed 120 pairs to" in result.output and WRITE not in result.output
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


def test_private_adapter_is_invisible_without_a_token(hub, runner, finished: Path, monkeypatch) -> None:
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
    assert "token" not in json.dumps(report).lower()


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
