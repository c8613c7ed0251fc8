"""Adapters: what is refused before any weights load (pickles, wrong shapes, no base), and what loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import save_file

from dpo_recipe.config.schema import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.models.adapters import adapter_base, check_adapter_matches_base, resolve_adapter_dir
from dpo_recipe.models.loading import skeleton_model

Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"  # 64 -> 64 in the tiny model
V_PROJ = "base_model.model.model.layers.1.self_attn.v_proj"  # 64 -> 32 (two KV heads of 16)


def adapter_dir(tmp_path: Path, *files: str) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    for name in files:
        (folder / name).write_bytes(b"weights")
    return folder


def test_a_pickle_only_adapter_is_refused_with_the_conversion_to_run(tmp_path: Path) -> None:
    folder = adapter_dir(tmp_path, "adapter_model.bin")
    with pytest.raises(ModelError) as err:
        resolve_adapter_dir(str(folder))
    message = str(err.value)
    assert f"{folder} holds its adapter weights only as a pickle file (adapter_model.bin)" in message
    assert f"torch.load('{folder / 'adapter_model.bin'}', weights_only=True)" in message
    assert f"'{folder / 'adapter_model.safetensors'}'" in message


def test_safetensors_beside_a_pickle_is_accepted(tmp_path: Path) -> None:
    folder = adapter_dir(tmp_path, "adapter_model.bin", "adapter_model.safetensors")
    assert resolve_adapter_dir(str(folder)) == folder


def test_what_is_not_an_adapter_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a LoRA adapter directory"):
        resolve_adapter_dir(str(tmp_path))
    with pytest.raises(ModelError, match="neither a directory nor a Hub id USER/NAME"):
        resolve_adapter_dir(str(tmp_path / "x.bin"))


def test_base_comes_from_the_recipe_or_the_override(tmp_path: Path) -> None:
    folder = adapter_dir(tmp_path, "adapter_model.safetensors")
    with pytest.raises(ModelError, match="has no recipe.yaml naming its base model: pass --base MODEL"):
        adapter_base(str(folder))
    _, _, section = adapter_base(str(folder), base="some/base")
    assert (section.name_or_path, section.gguf_file) == ("some/base", None)
    (folder / "recipe.yaml").write_text("model: {name_or_path: recorded/base, revision: v1}\n")
    found, recipe, section = adapter_base(str(folder))
    assert found == folder and recipe.model.revision == "v1"
    assert (section.name_or_path, section.revision) == ("recorded/base", "v1")


def test_adapter_shapes_are_checked_against_the_base(tmp_path: Path, tiny_model: Path) -> None:
    skeleton = skeleton_model(ModelSection(name_or_path=str(tiny_model)))
    folder = adapter_dir(tmp_path)
    weights = {
        f"{Q_PROJ}.lora_A.weight": torch.zeros(8, 64),
        f"{Q_PROJ}.lora_B.weight": torch.zeros(64, 8),
        f"{V_PROJ}.lora_A.weight": torch.zeros(8, 64),
        f"{V_PROJ}.lora_B.weight": torch.zeros(32, 8),
    }
    save_file(weights, folder / "adapter_model.safetensors")
    check_adapter_matches_base(folder, skeleton, "tiny")

    weights[f"{V_PROJ}.lora_B.weight"] = torch.zeros(48, 8)
    weights["base_model.model.model.layers.9.mlp.up_proj.lora_A.weight"] = torch.zeros(8, 64)
    save_file(weights, folder / "adapter_model.safetensors")
    with pytest.raises(ModelError) as err:
        check_adapter_matches_base(folder, skeleton, "tiny")
    assert "does not fit base model 'tiny'" in str(err.value)
    assert "model.layers.1.self_attn.v_proj has size 32, the adapter expects 48" in str(err.value)
    assert "model.layers.9.mlp.up_proj does not exist" in str(err.value)

    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="no adapter_model.safetensors"):
        check_adapter_matches_base(folder, skeleton, "tiny")


@pytest.mark.parametrize("typed", ["/nonexistent", "./run/out", "~/outputs", "a/b/c", "bad id/x"])
def test_a_mistyped_path_is_not_sent_to_the_hub(typed: str) -> None:
    with pytest.raises(ModelError, match=r"is neither a directory nor a Hub id USER/NAME\. Give the output directory"):
        resolve_adapter_dir(typed)


def test_only_the_users_own_run_folder_keeps_its_recorded_local_paths(tmp_path: Path) -> None:
    """A pushed adapter downloaded to a folder (hf download --local-dir) carries a stranger's recipe.yaml: its local
    paths are refused as on the Hub; a run folder the user trained (it holds the run marker) keeps them."""
    import yaml

    from dpo_recipe.config.trust import RUN_MARKER
    from dpo_recipe.errors import RecipeError

    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    recipe = {"model": {"name_or_path": "/home/bob/tiny"}, "data": {"source": "/home/bob/private.jsonl"}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError) as refused:
        adapter_base(str(folder))
    assert "model.name_or_path is a local path ('/home/bob/tiny'); give it yourself (--base MODEL)" in str(
        refused.value
    )
    assert "data.source is a local path" in str(refused.value)
    (folder / RUN_MARKER).write_text("{}")
    _, _, section = adapter_base(str(folder))
    assert section.name_or_path == "/home/bob/tiny" and section.trust_remote_code is False


# ---- model.init_adapter: training that starts from an adapter ------------------------------------------------
FAST = ("eval.num_generations=0", "data.max_train_pairs=8", "data.max_eval_pairs=4", "training.learning_rate=1e-2")


@pytest.fixture(scope="module")
def first_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short DPO run whose adapter the next runs start from."""
    from dpo_recipe.train import run

    out = tmp_path_factory.mktemp("first") / "adapter"
    run("tiny-ja", tiny_overrides(tiny_model, *FAST), output_dir=str(out))
    return out


def _reference(tiny_model: Path, out: Path, *settings: str) -> tuple[list[float], list[dict]]:
    """The reference log-probs training computed for its pairs (chosen answers), and the tokenized pairs."""
    from dpo_recipe.train import setup
    from dpo_recipe.training.run_context import RunContext
    from dpo_recipe.training.run_dir import release_lock

    training = setup(
        RunContext(recipe="tiny-ja", overrides=tuple(tiny_overrides(tiny_model, *FAST, *settings)), output_dir=str(out))
    )
    release_lock(out)
    dataset = training.trainer.train_dataset
    return list(dataset["ref_chosen_logps"]), [dataset[i] for i in range(len(dataset))]


def _peft_logps(tiny_model: Path, adapter: Path, pair: dict, under: tuple[Path, ...] = ()) -> float:
    """log p(chosen | prompt) under base + ``under`` merged + ``adapter``, enabled: one plain forward, no packing."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    for merged in under:
        base = PeftModel.from_pretrained(base, merged).merge_and_unload()
    model = PeftModel.from_pretrained(base, adapter)
    ids = torch.tensor([pair["prompt_ids"] + pair["chosen_ids"]])
    with torch.no_grad():
        logps = torch.log_softmax(model.eval()(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    per_token = logps.gather(1, targets[:, None])[:, 0]
    return float(per_token[len(pair["prompt_ids"]) - 1 :].sum())


def test_the_reference_is_the_base_plus_the_init_adapter_and_dpo_starts_at_ln2(
    first_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    import math

    from dpo_recipe.train import run

    reference, pairs = _reference(tiny_model, tmp_path / "setup", f"model.init_adapter={first_adapter}")
    short = [i for i, p in enumerate(pairs) if len(p["prompt_ids"]) + len(p["chosen_ids"]) <= 128][:3]
    assert short
    for i in short:
        assert reference[i] == pytest.approx(_peft_logps(tiny_model, first_adapter, pairs[i]), rel=1e-5)
    bare, _ = _reference(tiny_model, tmp_path / "bare")
    assert abs(bare[short[0]] - reference[short[0]]) > 0.05  # the adapter moved the reference
    metrics = run(
        "tiny-ja",
        tiny_overrides(tiny_model, *FAST, f"model.init_adapter={first_adapter}"),
        output_dir=str(tmp_path / "second"),
    )
    assert metrics["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at step 0
    from dpo_recipe.evaluation.command import run_eval

    again = run_eval(str(tmp_path / "second"), max_pairs=4, out=tmp_path / "eval.json")  # merges the adapter again
    assert again["overall"]["reward_accuracy"] == pytest.approx(metrics["eval"]["overall"]["reward_accuracy"])
    assert again["overall"]["reward_margin"] == pytest.approx(metrics["eval"]["overall"]["reward_margin"], rel=1e-4)


def test_an_adapter_trained_from_another_is_loaded_on_top_of_it_at_every_depth(
    first_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """SFT -> DPO -> DPO: the third run's reference is base + first merged + second, as PEFT computes it, and
    ``dpo-recipe eval`` of the third adapter merges both under it (its numbers are training's)."""
    import math

    from dpo_recipe.evaluation.command import run_eval
    from dpo_recipe.models.adapters import adapter_stack
    from dpo_recipe.train import run

    second = tmp_path / "second"
    run("tiny-ja", tiny_overrides(tiny_model, *FAST, f"model.init_adapter={first_adapter}"), output_dir=str(second))
    assert adapter_stack(str(second)) == [first_adapter, second]
    reference, pairs = _reference(tiny_model, tmp_path / "setup", f"model.init_adapter={second}")
    short = [i for i, p in enumerate(pairs) if len(p["prompt_ids"]) + len(p["chosen_ids"]) <= 128][:2]
    for i in short:
        direct = _peft_logps(tiny_model, second, pairs[i], under=(first_adapter,))
        assert reference[i] == pytest.approx(direct, rel=1e-5)
        assert abs(reference[i] - _peft_logps(tiny_model, second, pairs[i])) > 1e-3  # the first adapter counts
    third = run(
        "tiny-ja", tiny_overrides(tiny_model, *FAST, f"model.init_adapter={second}"), output_dir=str(tmp_path / "3")
    )
    assert third["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    again = run_eval(str(tmp_path / "3"), max_pairs=4, out=tmp_path / "eval.json")
    assert again["overall"]["reward_margin"] == pytest.approx(third["eval"]["overall"]["reward_margin"], rel=1e-4)


def test_a_chain_of_adapters_that_loops_or_points_home_from_a_download_is_refused(
    first_adapter: Path, tmp_path: Path
) -> None:
    import shutil

    from dpo_recipe.config.trust import RUN_MARKER
    from dpo_recipe.errors import ModelError
    from dpo_recipe.models.adapters import adapter_stack

    looped = tmp_path / "looped"
    shutil.copytree(first_adapter, looped)
    recipe = (looped / "recipe.yaml").read_text()
    (looped / "recipe.yaml").write_text(recipe.replace("init_adapter: null", f"init_adapter: {looped}", 1))
    with pytest.raises(ModelError, match=r"sits on a chain of adapters that loops back on itself"):
        adapter_stack(str(looped))
    (looped / RUN_MARKER).unlink()  # as a download: no run marker, and a path on the publisher's machine
    with pytest.raises(ModelError, match=r"was trained on top of the adapter '.*looped'.*a local path on someone"):
        adapter_stack(str(looped))
    gone = tmp_path / "gone"
    shutil.copytree(first_adapter, gone)
    (gone / "recipe.yaml").write_text(recipe.replace("init_adapter: null", "init_adapter: ./moved-away", 1))
    with pytest.raises(ModelError, match=r"trained on top of the adapter './moved-away'.*cannot be loaded: Adapter"):
        adapter_stack(str(gone))


def test_a_changed_init_adapter_at_the_same_path_never_serves_stale_reference_logps(
    first_adapter: Path, tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import shutil

    from safetensors.torch import load_file

    adapter = tmp_path / "adapter"
    shutil.copytree(first_adapter, adapter)
    before, _ = _reference(tiny_model, tmp_path / "a", f"model.init_adapter={adapter}")
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v * 2 if ".lora_B." in k else v for k, v in weights.items()}, adapter / "adapter_model.safetensors")
    warm, _ = _reference(tiny_model, tmp_path / "b", f"model.init_adapter={adapter}")
    monkeypatch.setenv("DPO_RECIPE_CACHE", str(tmp_path / "cold-cache"))
    cold, _ = _reference(tiny_model, tmp_path / "c", f"model.init_adapter={adapter}")
    assert warm == cold and warm != before


def test_train_init_adapter_continues_the_same_adapter_from_its_own_reference(
    first_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    import math

    from safetensors.torch import load_file

    from dpo_recipe.train import run

    settings = (f"model.init_adapter={first_adapter}", "lora.train_init_adapter=true")
    metrics = run("tiny-ja", tiny_overrides(tiny_model, *FAST, *settings), output_dir=str(tmp_path / "more"))
    assert metrics["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    start = load_file(first_adapter / "adapter_model.safetensors")
    trained = load_file(tmp_path / "more" / "adapter_model.safetensors")
    assert trained.keys() == start.keys()  # the same adapter, not a new one on top
    assert any(not torch.equal(trained[k], start[k]) for k in start)


def test_an_all_linear_adapter_is_trained_further_by_an_all_linear_recipe(
    first_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """PEFT records all-linear as the module names it picked, so a recipe saying all-linear (the Gemma recipe, whose
    on-policy rounds stopped here) continues its own adapter; against a q/v adapter it is refused."""
    import math

    from dpo_recipe.train import run

    wide = ("lora.target_modules=all-linear",)
    start = tmp_path / "all-linear"
    run("tiny-ja", tiny_overrides(tiny_model, *FAST, *wide), output_dir=str(start))
    settings = (*wide, f"model.init_adapter={start}", "lora.train_init_adapter=true")
    more = run("tiny-ja", tiny_overrides(tiny_model, *FAST, *settings), output_dir=str(tmp_path / "more"))
    assert more["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    settings = (*wide, f"model.init_adapter={first_adapter}", "lora.train_init_adapter=true")
    from dpo_recipe.errors import DpoRecipeError

    with pytest.raises(DpoRecipeError, match=r"on \['q_proj', 'v_proj'\], the recipe's LoRA rank 8 on all-linear;"):
        run("tiny-ja", tiny_overrides(tiny_model, *FAST, *settings), output_dir=str(tmp_path / "refused"))


def test_an_adapter_trained_further_against_the_bare_base(
    first_adapter: Path, tiny_model: Path, tmp_path: Path, capsys
) -> None:
    """lora.init_adapter_reference base: the reference is the base with adapters off, not the adapter's start, so at
    step 0 the policy (the start) already differs from it; the card says which reference it was. Both train on the
    packed path: the PeftModel handed over passes logits_to_keep on to the model it wraps."""
    import math

    from dpo_recipe.train import run

    settings = (f"model.init_adapter={first_adapter}", "lora.train_init_adapter=true")
    start = run("tiny-ja", tiny_overrides(tiny_model, *FAST, *settings), output_dir=str(tmp_path / "start"))
    settings += ("lora.init_adapter_reference=base",)
    base = run("tiny-ja", tiny_overrides(tiny_model, *FAST, *settings), output_dir=str(tmp_path / "base"))
    assert start["train"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(base["train"]["first_loss"] - math.log(2)) > 1e-4  # the start is not the reference any more
    assert "its reference model was the bare base" in (tmp_path / "base" / "README.md").read_text()
    assert "its reference model was that adapter's starting state" in (tmp_path / "start" / "README.md").read_text()
    assert "plain DPOTrainer" not in capsys.readouterr().out


def test_a_bad_init_adapter_is_refused_in_one_paragraph_before_weights_load(
    first_adapter: Path, tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import importlib

    from dpo_recipe.errors import DpoRecipeError
    from dpo_recipe.train import run

    monkeypatch.setattr(importlib.import_module("dpo_recipe.train"), "load_policy", lambda *a: pytest.fail("loaded"))
    not_peft = tmp_path / "not-peft"
    not_peft.mkdir()
    prefix = adapter_dir(tmp_path)
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "someone/bigger-model", "r": 8})
    )
    wide = {f"{V_PROJ}.lora_A.weight": torch.zeros(8, 64), f"{V_PROJ}.lora_B.weight": torch.zeros(48, 8)}
    save_file(wide, other / "adapter_model.safetensors")
    cases = [
        (("model.init_adapter=/nonexistent/sft",), r"model.init_adapter: Adapter '/nonexistent/sft' is neither a dir"),
        ((f"model.init_adapter={not_peft}",), r"model.init_adapter: .*not-peft is not a LoRA adapter directory"),
        ((f"model.init_adapter={prefix}",), r"model.init_adapter: .* holds a PREFIX_TUNING adapter, not a LoRA"),
        (
            (f"model.init_adapter={other}",),
            rf"model.init_adapter: .*other was trained on 'someone/bigger-model', not on this recipe's base "
            rf"model.name_or_path '{tiny_model}' \(.*v_proj has size 32, the adapter expects 48",
        ),
        (
            (f"model.init_adapter={first_adapter}", "lora.train_init_adapter=true", "lora.r=4"),
            r"lora.train_init_adapter: the adapter in .* has rank 8 on \['q_proj', 'v_proj'\], the recipe's LoRA rank "
            r"4 on \['q_proj', 'v_proj'\].* Set lora.r: 8",
        ),
        (
            (f"model.init_adapter={first_adapter}", "lora.train_init_adapter=true", "lora.target_modules=[q_proj]"),
            r"lora.train_init_adapter: the adapter in .* rank 8 on \['q_proj', 'v_proj'\], the recipe's LoRA rank 8 "
            r"on \['q_proj'\]",
        ),
        (("lora.train_init_adapter=true",), r"lora.train_init_adapter: true trains model.init_adapter further"),
    ]
    for settings, message in cases:
        with pytest.raises(DpoRecipeError, match=message) as err:
            run("tiny-ja", tiny_overrides(tiny_model, *FAST, *settings), output_dir=str(tmp_path / "run"))
        assert "\n" not in str(err.value) and not (tmp_path / "run").exists(), settings
