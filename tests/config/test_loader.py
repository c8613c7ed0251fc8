from pathlib import Path

import pytest

from dpo_recipe.config.coercion import describe_keys
from dpo_recipe.config.loader import data_section, load_recipe, packaged_recipes, single_run_recipes
from dpo_recipe.errors import RecipeError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", sorted(packaged_recipes()))
def test_every_packaged_recipe_loads_and_says_what_it_is_for(name: str) -> None:
    from dpo_recipe.config.stages import read_stages

    path = packaged_recipes()[name]
    assert path.read_text(encoding="utf-8").startswith("# ")
    listed = read_stages(path)
    assert (listed is None) == (name in single_run_recipes())
    for stage in listed.stages if listed else []:  # a chain: each stage's recipe, with its own settings
        assert load_recipe(stage.recipe, stage.overrides).model.name_or_path
    if listed is None:
        assert load_recipe(name).model.name_or_path


def test_guide_recipe_keeps_the_guide_settings() -> None:
    t = load_recipe("dialogpt-small-ja").training
    assert (t.num_epochs, t.per_device_batch_size, t.gradient_accumulation_steps) == (1, 1, 4)
    assert (t.learning_rate, t.max_length) == (5e-6, 128)
    assert load_recipe("dialogpt-small-ja").model.name_or_path == "microsoft/DialoGPT-small"


def test_unknown_key_names_file_dotted_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {name_or_path: m}\ntraining:\n  learnig_rate: 1e-5\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert "training.learnig_rate: unknown key; did you mean learning_rate?" in str(err.value)


def test_unknown_section_is_suggested(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="trainig: unknown section; did you mean training"):
        load_recipe(write(tmp_path, "model: {name_or_path: m}\ntrainig: {}\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("training: {learning_rate: -1}", "training.learning_rate: must be > 0.0, got -1"),
        ("lora: {r: 0}", "lora.r: must be >= 1, got 0"),
        ("training: {max_length: 8}", "training.max_length: must be >= 16, got 8"),
        ("data: {test_split: ''}", "data.test_split: the eval split name must not be empty"),
        ("training: {per_device_batch_size: two}", "training.per_device_batch_size: expected an integer, got 'two'"),
        ("training: {activation_checkpointing: 3}", "training.activation_checkpointing: expected true or false"),
        ("lora: {target_modules: 3}", "lora.target_modules: expected a list of strings or a string"),
        ("training: {precision: fp8}", "training.precision: expected one of auto, fp32, bf16, fp16"),
        ("hub: {push: true}", "hub.repo_id: required when hub.push is true"),
    ],
)
def test_wrong_types_and_impossible_values(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "model: {name_or_path: m}\n" + text + "\n"))
    assert expected in str(err.value)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "model: {name_or_path: m}\nlora: {r: 0}\ntraining: {max_length: 1}\n"))
    assert "lora.r" in str(err.value) and "training.max_length" in str(err.value)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(
        RecipeError, match=r"YAML syntax error at line 3, column 11: mapping values are not allowed here"
    ):
        load_recipe(write(tmp_path, "model:\n  name_or_path: m\n  dtype: a: b\n"))


def test_missing_model_section_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="model: required section is missing"):
        load_recipe(write(tmp_path, "training: {}\n"))
    with pytest.raises(RecipeError, match="neither an existing file nor a packaged recipe"):
        load_recipe(str(tmp_path / "nope.yaml"))


def test_overrides_apply_and_validate_the_same_way() -> None:
    recipe = load_recipe(
        "tiny-ja", ["training.learning_rate=1e-5", "lora.target_modules=all-linear", "data.max_train_pairs=8"]
    )
    assert recipe.training.learning_rate == 1e-5
    assert recipe.lora.target_modules == "all-linear"
    assert recipe.data.max_train_pairs == 8
    assert load_recipe("tiny-ja", [r"lora.target_modules=.*\.(q|v)_proj"]).lora.target_modules == r".*\.(q|v)_proj"
    # a regular expression that is none: refused with the recipe, not a traceback after the weights load
    with pytest.raises(RecipeError, match=r"lora.target_modules: 'q_proj\[' is read as a regular expression"):
        load_recipe("tiny-ja", ["lora.target_modules=q_proj["])
    with pytest.raises(RecipeError, match="training.learning_rate: must be > 0.0"):
        load_recipe("tiny-ja", ["training.learning_rate=-1e-5"])
    with pytest.raises(RecipeError, match="training.learnig_rate: unknown key; did you mean learning_rate"):
        load_recipe("tiny-ja", ["training.learnig_rate=1e-5"])
    with pytest.raises(RecipeError, match="expected SECTION.KEY=VALUE"):
        load_recipe("tiny-ja", ["learning_rate=1e-5"])
    with pytest.raises(RecipeError, match="given twice with different values"):
        load_recipe("tiny-ja", ["training.beta=0.1", "training.beta=0.2"])


def test_every_key_is_documented() -> None:
    rows = describe_keys()
    assert {"training.learning_rate", "lora.r", "model.gguf_file", "data.source"} <= {r[0] for r in rows}
    assert all(help_text for *_, help_text in rows)


def test_resolved_recipe_round_trips_through_yaml(tmp_path: Path) -> None:
    recipe = load_recipe("smollm2-135m-ja", ["training.beta=0.3"])
    again = load_recipe(write(tmp_path, recipe.to_yaml()))
    assert again == recipe


FLOAT_KEYS = [key for key, kind, _, _ in describe_keys() if "finite number" in kind]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_key_refuses_nan_and_infinity(key: str, value: str) -> None:
    # YAML reads these as floats, and NaN slips past every range check; each must be named before loading
    written = f"[{value}]" if "list" in dict((k, kind) for k, kind, _, _ in describe_keys())[key] else value
    with pytest.raises(RecipeError, match=f"{key}: expected .*finite number"):
        load_recipe("tiny-ja", [f"{key}={written}"])


def test_float_keys_are_the_ones_the_objective_and_optimizer_read() -> None:
    assert {"training.learning_rate", "training.beta", "training.max_grad_norm", "training.loss_weights"} <= set(
        FLOAT_KEYS
    )


def test_loss_type_names_are_checked_with_a_suggestion() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", ["training.loss_type=[sigmoid, ipoo]"])
    message = str(err.value)
    assert "training.loss_type: unknown loss 'ipoo'; known: sigmoid, hinge, ipo," in message
    assert "sigmoid_norm, simpo, orpo; did you mean ipo?" in message
    with pytest.raises(RecipeError, match="training.loss_type: unknown loss 'kto'"):
        load_recipe("tiny-ja", ["training.loss_type=kto"])  # unpaired: TRL's KTOTrainer, not a pair loss
    with pytest.raises(RecipeError, match="training.loss_type: expected at least one loss name"):
        load_recipe("tiny-ja", ["training.loss_type=[]"])
    assert load_recipe("tiny-ja", ["training.loss_type=[ipo, sft]"]).training.loss_type == ["ipo", "sft"]


def test_reference_free_losses_train_alone_packed_with_their_own_keys() -> None:
    recipe = load_recipe("tiny-ja", ["training.loss_type=simpo", "training.simpo_gamma=1.2", "training.beta=2.5"])
    assert (recipe.training.loss_type, recipe.training.simpo_gamma, recipe.training.cpo_alpha) == ("simpo", 1.2, 0.0)
    assert load_recipe("tiny-ja", ["training.loss_type=[orpo]"]).training.loss_type == ["orpo"]
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", ["training.loss_type=[sigmoid, orpo]"])
    assert "training.loss_type: orpo is reference-free (no reference pass runs for it) and trains alone" in (
        message := str(err.value)
    )
    assert "Name one of simpo, orpo alone" in message
    with pytest.raises(RecipeError, match="training.packing: simpo trains on the packed path only"):
        load_recipe("tiny-ja", ["training.loss_type=simpo", "training.packing=false"])
    with pytest.raises(RecipeError, match=r"training.simpo_gamma: must be >= 0.0, got -0.5"):
        load_recipe("tiny-ja", ["training.simpo_gamma=-0.5"])
    with pytest.raises(RecipeError, match=r"training.cpo_alpha: must be >= 0.0, got -1"):
        load_recipe("tiny-ja", ["training.cpo_alpha=-1"])
    keys = {key: help_text for key, _, _, help_text in describe_keys()}
    assert "simpo_gamma" in keys["training.simpo_gamma"] and "CPO-SimPO" in keys["training.cpo_alpha"]
    assert "simpo" in keys["training.loss_type"] and "orpo" in keys["training.loss_type"]
    assert {"training.simpo_gamma", "training.cpo_alpha"} <= set(FLOAT_KEYS)


def test_label_smoothing_is_a_share_below_one_half_and_exo_pair_needs_it() -> None:
    assert load_recipe("tiny-ja").training.label_smoothing == 0.0
    with pytest.raises(RecipeError, match=r"training.label_smoothing: must be < 0.5, got 0.5"):
        load_recipe("tiny-ja", ["training.label_smoothing=0.5"])
    with pytest.raises(RecipeError, match=r"training.label_smoothing: must be >= 0.0, got -0.1"):
        load_recipe("tiny-ja", ["training.label_smoothing=-0.1"])
    with pytest.raises(RecipeError, match="training.label_smoothing: exo_pair needs it > 0"):
        load_recipe("tiny-ja", ["training.loss_type=exo_pair"])
    recipe = load_recipe("tiny-ja", ["training.loss_type=exo_pair", "training.label_smoothing=0.1"])
    assert recipe.training.label_smoothing == 0.1


def test_a_data_command_checks_its_data_keys_as_a_recipe_does() -> None:
    section = data_section({"source": "se.jsonl", "form": "standard"}, ["data.prompt_column=[instruction, input]"])
    assert (section.source, section.form, section.prompt_column) == ("se.jsonl", "standard", ["instruction", "input"])
    with pytest.raises(RecipeError) as err:
        data_section({"source": "x", "form": "hf"}, ["data.ranked_margin=0", "training.seed=1"])
    assert str(err.value) == (
        "training: a data command takes data.KEY=VALUE only; data.form: expected one of auto, standard, implicit, "
        "hh, ranked, sharegpt, openai, unpaired, completion, chat, got 'hf'; data.ranked_margin: must be > 0.0, got 0. "
        "See 'dpo-recipe recipes keys' for every key and its form."
    )


def test_an_objective_owns_its_defaults_and_an_explicit_value_is_still_checked() -> None:
    """``--set training.objective=kto`` on a DPO recipe trains as it is: packing (DPO's path) defaults to false
    under kto; a packing: true the user writes is refused, with its fix."""
    assert load_recipe("tiny-ja").training.packing is True
    kto = load_recipe("tiny-ja", ["training.objective=kto"])
    assert (kto.training.objective, kto.training.packing) == ("kto", False)
    assert "packing: false" in kto.to_yaml()  # the saved recipe.yaml repeats the run as it trained
    with pytest.raises(RecipeError, match=r"training.packing: the packed path computes DPO's losses.*remove"):
        load_recipe("tiny-ja", ["training.objective=kto", "training.packing=true"])


def test_the_keys_an_objective_does_not_read_are_recipe_keys_that_the_checks_refuse_in_a_file() -> None:
    """config.vocabulary's NOT_READ_BY names real keys (config.schema), and config.checks refuses each one a recipe
    sets under that objective (a --set switch leaves the file's out instead: tests/config/test_stages.py)."""
    import dataclasses

    from dpo_recipe.config.checks import cross_checks
    from dpo_recipe.config.schema import SECTIONS
    from dpo_recipe.config.vocabulary import NOT_READ_BY, OBJECTIVES

    changed = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0], "label_smoothing": 0.1, "packing": True}
    changed |= {"simpo_gamma": 0.7, "cpo_alpha": 0.5, "token_learning_rate": 1e-3, "beta": 0.3}
    for objective, keys in NOT_READ_BY.items():
        assert objective in OBJECTIVES
        for dotted in keys:
            section, key = dotted.split(".")
            assert key in {f.name for f in dataclasses.fields(SECTIONS[section])}, dotted
            recipe = load_recipe("tiny-ja", [f"training.objective={objective}", "training.per_device_batch_size=2"])
            setattr(getattr(recipe, section), key, changed[key])
            assert any(problem.startswith(dotted) for problem in cross_checks(recipe)), (objective, dotted)


def test_the_held_out_evaluation_keys_are_checked_together() -> None:
    """eval.subset and training.early_stopping read what eval.steps measures; early stopping's keys are checked
    one by one; objectives without a packed held-out scorer refuse eval.steps, all before any weights load."""
    stopping = load_recipe("tiny-ja", ["eval.steps=5", "training.early_stopping={patience: 3}"])
    assert (stopping.eval.steps, stopping.training.early_stopping) == (5, {"patience": 3})
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", ["eval.subset=8", "training.early_stopping={patience: 2}"])
    assert "eval.subset: the pairs eval.steps scores during training; set eval.steps" in str(err.value)
    assert "training.early_stopping: stops on the held-out numbers eval.steps measures; set eval.steps" in str(
        err.value
    )
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", ["eval.steps=5", "training.early_stopping={patiense: 2, metric: acc}"])
    message = str(err.value)
    assert "training.early_stopping.patiense: unknown key (known: patience, metric); did you mean patience?" in message
    assert "training.early_stopping.patience: expected an integer >= 1" in message and "got None" in message
    assert "training.early_stopping.metric: expected one of loss, reward_accuracy, reward_margin, got 'acc'" in message
    for patience in ("0", "true", "1.5", "'3'"):
        with pytest.raises(RecipeError, match="training.early_stopping.patience: expected an integer >= 1"):
            load_recipe("tiny-ja", ["eval.steps=5", f"training.early_stopping={{patience: {patience}}}"])
    with pytest.raises(
        RecipeError, match="training.early_stopping: expected a mapping of names to values or null, got 3"
    ):
        load_recipe("tiny-ja", ["eval.steps=5", "training.early_stopping=3"])
    with pytest.raises(RecipeError, match="eval.steps: must be >= 1, got 0"):
        load_recipe("tiny-ja", ["eval.steps=0"])
    for recipe in ("tiny-ja-kto", "tiny-ja-sft"):
        with pytest.raises(
            RecipeError, match=r"eval.steps: the held-out evaluation during training .* remove eval.steps"
        ):
            load_recipe(recipe, ["eval.steps=2"])


def test_eval_judge_is_checked_with_the_recipe() -> None:
    """eval.judge: a judge judge.kind could name; refused, naming the key, before any data or weights: a judge
    that does not exist (with the nearest name), one whose URL carries a password or query (written into
    metrics.json and the card), and one with no answers to judge."""
    assert load_recipe("tiny-ja", ["eval.judge=rules"]).eval.judge == "rules"
    assert load_recipe("tiny-ja").eval.judge is None
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", ["eval.judge=rule"])
    assert (
        "eval.judge: unknown judge 'rule'; known: rules, implicit, reward-model:PATH_OR_ID, openai:URL; did you "
        in (str(err.value))
    )
    assert str(err.value).count("\n") == 0  # one paragraph
    for url in ("http://user:sk-secret@host/v1", "https://host/v1?api_key=sk-secret", "http://host/v1#x"):
        with pytest.raises(RecipeError, match="eval.judge: openai:URL .* carries credentials or a query") as err:
            load_recipe("tiny-ja", [f"eval.judge=openai:{url}"])
        assert "judge.api_key_env" in str(err.value)
    with pytest.raises(RecipeError, match="judge.kind: openai:URL .* carries credentials or a query"):
        load_recipe("tiny-ja", ["judge.kind=openai:http://user:pw@host/v1"])
    with pytest.raises(RecipeError, match="eval.judge: expected a string or null, got 5"):
        load_recipe("tiny-ja", ["eval.judge=5"])
    with pytest.raises(RecipeError, match="eval.judge: judges the held-out answers .* eval.num_generations is 0"):
        load_recipe("tiny-ja", ["eval.judge=rules", "eval.num_generations=0"])
    with pytest.raises(RecipeError, match="eval.judge: openai needs where it is: openai:URL"):
        load_recipe("tiny-ja", ["eval.judge='openai:'"])


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("iterate.replay=0", "iterate.replay: must be > 0.0, got 0"),
        ("iterate.replay=-0.5", "iterate.replay: must be > 0.0, got -0.5"),
        ("iterate.replay=1", "iterate.replay: must be < 1.0, got 1"),
        ("iterate.replay=1.5", "iterate.replay: must be < 1.0, got 1.5"),
        ("iterate.replay=half", "iterate.replay: expected a finite number, got 'half'"),
        ("iterate.replay=true", "iterate.replay: expected a finite number, got True"),
        ("iterate.rounds=0", "iterate.rounds: must be >= 1, got 0"),
        ("iterate.rounds=1.5", "iterate.rounds: expected an integer, got 1.5"),
        ("iterate.num_generations=1", "iterate.num_generations: must be >= 2, got 1"),
        ("iterate.temperature=0", "iterate.temperature: must be > 0.0, got 0"),
        ("iterate.top_p=0", "iterate.top_p: must be > 0.0, got 0"),
        ("iterate.top_p=1.5", "iterate.top_p: must be <= 1.0, got 1.5"),
        ("judge.min_margin=-1", "judge.min_margin: must be >= 0.0, got -1"),
        ("judge.rules={length: many}", "judge.rules: expected a mapping of names to finite numbers"),
        ("judge.rules={length: true}", "judge.rules: expected a mapping of names to finite numbers"),
        ("judge.rules={}", "judge.rules: no weight above 0, so the rules judge scores every answer alike"),
        ("judge.rules={length: 0, repetition: 0}", "judge.rules: no weight above 0"),
        ("judge.rules={length: 1e308, repetition: 1e308}", "judge.rules: the weights add up to more than a number"),
        ("judge.kind=openai:http://127.0.0.1:8080/v 1", "is not a URL the judge can ask (it holds spaces or control"),
        ("judge.kind=openai:http:///v1", "openai:URL 'http:///v1' is not a URL the judge can ask (it names no host)"),
        ("judge.kind=openai:http://127.0.0.1:99999/v1", "is not a URL the judge can ask (Port out of range"),
        ("judge.kind=openai:https://[::1/v1", "is not a URL the judge can ask (Invalid IPv6 URL)"),
    ],
)
def test_the_on_policy_keys_are_refused_when_the_recipe_is_checked(item: str, expected: str) -> None:
    """What iterate and pairs sample / judge read, refused by the recipe check that runs before any weights load."""
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny-ja", [item])
    assert expected in str(err.value)


def test_the_on_policy_keys_take_their_whole_range() -> None:
    recipe = load_recipe("tiny-ja", ["iterate.top_p=1", "iterate.replay=0.99", "judge.rules={length: 5e-1}"])
    assert (recipe.iterate.top_p, recipe.iterate.replay, recipe.judge.rules) == (1.0, 0.99, {"length": 0.5})
