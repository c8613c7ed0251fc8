"""Trained LoRA adapters: found locally or on the Hub, checked against their base, then loaded; and the
model a run starts from when its recipe names one (``model.init_adapter``).

An adapter only fits the base it was trained on, and a pickle file from an untrusted source runs
code when it is unpickled; both are refused here with the fix named, before any weights load.

**Starting from an adapter.** ``model.init_adapter`` is merged into the base weights in memory
(``PeftModel.from_pretrained(...).merge_and_unload()``) and the run's new LoRA trains on top, so the
reference (the base with the new adapter off) is the starting policy, base + that adapter, as in the
usual SFT → DPO setup. Chosen over a frozen named adapter beside the new one because it costs nothing
after loading: the merged weights replace the base's in place (the adapter's own matrices are held only
while merging; no second adapter runs in every forward), the packed path and the base cache work as
they do on a plain base, and the cache keys on the merged weights' digest, so a changed adapter file
never serves the old reference log-probs. The new adapter belongs to that merged base: its
``recipe.yaml`` names ``model.init_adapter``, and eval / chat merge it again (``load_base``).
``lora.train_init_adapter`` instead loads the adapter trainable on the bare base; TRL keeps a frozen
copy of it (the ``"ref"`` adapter, one more adapter's memory) as the reference, and the output is a
whole adapter for the bare base.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import yaml

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.config.schema import ModelSection, Recipe
from dpo_recipe.config.trust import RUN_MARKER, FetchedRecipe, looks_local, refuse_untrusted
from dpo_recipe.data.sources import is_hub_id
from dpo_recipe.errors import ModelError
from dpo_recipe.models.loading import load_model, load_tokenizer, skeleton_model

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_STACK = 16  # adapters merged under one: far past any real chain, short of a loop


def resolve_adapter_dir(adapter: str) -> Path:
    """A local adapter directory, or a Hub id downloaded (safetensors only) into the HF cache.

    Only ``adapter_model.safetensors`` is ever loaded: a pickle file (``adapter_model.bin``, ``*.pt``)
    runs arbitrary code when unpickled, so one from an untrusted source is refused, with the
    conversion to run by hand for a file the user does trust.
    """
    path = Path(adapter).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").exists():
            raise ModelError(f"{path} is not a LoRA adapter directory (no adapter_config.json).")
        _refuse_pickle_only(path, [p.name for p in path.iterdir()])
        return path
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:  # "/nonexistent", "./out" and "a/b/c" are paths the user mistyped, not repo ids to download
        if adapter.count("/") != 1 or path.suffix or adapter.startswith(("/", ".", "~")):
            raise HFValidationError(adapter)
        validate_repo_id(adapter)
    except HFValidationError:
        raise ModelError(
            f"Adapter '{adapter}' is neither a directory nor a Hub id USER/NAME. Give the output directory "
            "of a training run (it holds adapter_config.json) or an adapter repo id on the Hub."
        ) from None

    allowed = ["*.json", "*.safetensors", "*.yaml", "*.md", "*.jinja", "*.txt", "*.model"]
    try:
        local = Path(snapshot_download(adapter, allow_patterns=allowed))
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise ModelError(
            f"Adapter '{adapter}' is not a local directory ({path.resolve()} does not exist) and could not be "
            f"downloaded as a Hub id ({type(exc).__name__}). Check the path, or the repo id and your network."
        ) from None
    if not (local / "adapter_model.safetensors").exists():
        _refuse_pickle_only(Path(adapter), HfApi().list_repo_files(adapter))
    return local


def _refuse_pickle_only(where: Path, names: list[str]) -> None:
    if "adapter_model.safetensors" in names:
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if not pickles:
        return
    weights = where / pickles[0]
    raise ModelError(
        f"{where} holds its adapter weights only as a pickle file ({', '.join(pickles)}); dpo-recipe loads "
        "safetensors only, because unpickling a file from an untrusted source can run any code. If you trust "
        'the file, convert it once: python -c "import torch; from safetensors.torch import save_file; '
        f"save_file(torch.load('{weights}', weights_only=True), '{where / 'adapter_model.safetensors'}')\""
    )


def adapter_base(
    adapter: str, base: str | None = None, *, trust_remote_code: bool = False, data: str | None = None
) -> tuple[Path, Recipe, ModelSection]:
    """The adapter's directory, the recipe it was trained with, and the base model to load it onto.

    An adapter is only usable on the base it was trained on, and training records that base in
    ``recipe.yaml`` beside the adapter; ``base`` overrides it (a plain Hub id or directory). That file
    is a record of someone's run, not the user's command (``config.trust``): the model repo's code runs
    only with ``trust_remote_code`` (``--trust-remote-code``), and its local paths are refused unless the
    user gives them (``base``, ``data``: eval's ``--data``) or the folder is the user's own run (it holds the
    run marker, which a push never sends: a downloaded adapter does not).
    """
    adapter_dir = resolve_adapter_dir(adapter)
    recipe = load_recipe(str(adapter_dir / "recipe.yaml")) if (adapter_dir / "recipe.yaml").exists() else Recipe()
    given = {"model.name_or_path", "model.gguf_file"} if base else set()
    fetched = FetchedRecipe(
        f"adapter {adapter}",
        frozenset(given | ({"data.source"} if data else set())),
        trust_remote_code=trust_remote_code,
        hints=(("model.", "--base MODEL"), ("data.", "--data SOURCE")),
        local_paths=(Path(adapter).expanduser() / RUN_MARKER).is_file(),  # the user's own run, not a download
    )
    refuse_untrusted(recipe, fetched)
    # the tokenizer saved beside the adapter carries the chat template training used: no file is read for it
    model_section = dataclasses.replace(recipe.model, trust_remote_code=trust_remote_code, chat_template=None)
    # merged under it (none for a bare base; a continued adapter sits where its start sat)
    model_section = dataclasses.replace(model_section, init_adapter=sits_on(adapter_dir))
    if base:
        model_section = dataclasses.replace(model_section, name_or_path=base, gguf_file=None)
    if not model_section.name_or_path:
        raise ModelError(f"{adapter_dir} has no recipe.yaml naming its base model: pass --base MODEL (Python: base=).")
    return adapter_dir, recipe, model_section


def load_adapter_model(adapter_dir: Path, base: ModelSection) -> tuple[Any, Any]:
    """``(PeftModel, tokenizer)`` on this process's device, the adapter's shapes checked before weights load.

    The tokenizer is the one saved beside the adapter, so padding and EOS are those training used.
    """
    from accelerate import PartialState
    from peft import PeftModel

    from dpo_recipe.models.hardware import keep_freed_memory_in_heap
    from dpo_recipe.models.token_rows import use_sparse_token_rows

    check_adapter_matches_base(adapter_dir, skeleton_model(base), base.name_or_path)
    keep_freed_memory_in_heap()
    tokenizer = load_tokenizer(dataclasses.replace(base, name_or_path=str(adapter_dir), gguf_file=None))
    model = PeftModel.from_pretrained(load_base(base), str(adapter_dir))
    use_sparse_token_rows(model)
    if not base.load_in_4bit:  # bitsandbytes places 4-bit weights itself and refuses .to()
        model.to(PartialState().device)
    return model, tokenizer


def check_adapter_matches_base(adapter_dir: Path, skeleton: Any, base_name: str) -> None:
    """Compare every LoRA matrix's shape with the base's layer before any weights load."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors (only safetensors adapters are loaded).")
    modules = dict(skeleton.named_modules())
    problems = []
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            shape = handle.get_slice(key).get_shape()
            path = key.removeprefix("base_model.model.").split(".lora_")[0]
            layer = modules.get(path)
            if layer is None or not hasattr(layer, "weight"):
                problems.append(f"{path} does not exist")
                continue
            out_features, in_features = layer.weight.shape[0], layer.weight.shape[-1]
            expected = in_features if ".lora_A." in key else out_features
            actual = shape[1] if ".lora_A." in key else shape[0]
            if expected != actual:
                problems.append(f"{path} has size {expected}, the adapter expects {actual}")
            if len(problems) >= 3:
                break
    if problems:
        raise ModelError(
            f"The adapter in {adapter_dir} does not fit base model '{base_name}': {'; '.join(problems)}. "
            "Pass the base model the adapter was trained on (--base), as recorded in its adapter_config.json."
        )


def init_adapter_dir(init_adapter: str) -> Path:
    """``model.init_adapter`` as a local directory (a Hub id downloaded, safetensors only)."""
    try:
        return resolve_adapter_dir(init_adapter)
    except ModelError as exc:
        raise ModelError(f"model.init_adapter: {exc}") from None


def check_init_adapter(recipe: Recipe, skeleton: Any) -> None:
    """Refuse, before any weights load, an init adapter that is missing, not a LoRA adapter, trained on another
    base, or (``lora.train_init_adapter``) of another rank or other target modules than the recipe's LoRA."""
    if not recipe.model.init_adapter:
        return
    directory = init_adapter_dir(recipe.model.init_adapter)
    config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    kind = config.get("peft_type")
    if kind != "LORA":
        raise ModelError(
            f"model.init_adapter: {directory} holds a {kind or 'non-PEFT'} adapter, not a LoRA adapter (its "
            "adapter_config.json has peft_type LORA). Give the output directory of a dpo-recipe run or another "
            "PEFT LoRA adapter."
        )
    base, recorded = recipe.model.name_or_path, config.get("base_model_name_or_path") or "an unrecorded base"
    try:
        check_adapter_matches_base(directory, skeleton, base)
        mismatch = is_hub_id(recorded) and is_hub_id(base) and recorded != base
        detail = "another Hub model"
    except ModelError as exc:
        mismatch, detail = True, str(exc).split(": ", 1)[-1].split(". Pass")[0]
    if mismatch:
        raise ModelError(
            f"model.init_adapter: {directory} was trained on '{recorded}', not on this recipe's base "
            f"model.name_or_path '{base}' ({detail}). Set model.name_or_path to the adapter's base, or start "
            f"from an adapter trained on '{base}'."
        )
    if recipe.lora.train_init_adapter:
        targets = config.get("target_modules")
        theirs = sorted(targets) if isinstance(targets, list) else targets
        ours = recipe.lora.target_modules
        ours = sorted(ours) if isinstance(ours, list) else ours
        same = lora_targets(targets, skeleton) == lora_targets(recipe.lora.target_modules, skeleton)
        if config.get("r") != recipe.lora.r or not same:
            raise ModelError(
                f"lora.train_init_adapter: the adapter in {directory} has rank {config.get('r')} on {theirs}, the "
                f"recipe's LoRA rank {recipe.lora.r} on {ours}; training it further keeps its own. Set lora.r: "
                f"{config.get('r')} and lora.target_modules: {theirs}, or lora.train_init_adapter: false to train a "
                "new adapter on top of it."
            )


def lora_targets(target_modules: str | list[str], skeleton: Any) -> set[str]:
    """The modules of ``skeleton`` that ``target_modules`` names, matched as PEFT matches them: ``all-linear``
    every Linear layer but the output layer; a list each module whose name is an entry or ends in "." + one; a
    string a regular expression of the whole name. PEFT records what it targeted in its own words (a list of names
    for ``all-linear``, full paths on a small model, suffixes on a large one), so they are compared this way."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if target_modules == "all-linear":  # GPT-2's linear layers are Conv1D
        output, linear = skeleton.get_output_embeddings(), (torch.nn.Linear, Conv1D)
        return {name for name, m in skeleton.named_modules() if isinstance(m, linear) and m is not output}
    names = [name for name, _ in skeleton.named_modules()]
    if isinstance(target_modules, str):
        return {name for name in names if re.fullmatch(target_modules, name)}
    return {name for name in names if any(name == t or name.endswith("." + t) for t in target_modules)}


def sits_on(adapter_dir: Path) -> str | None:
    """The adapter ``adapter_dir``'s own weights apply on top of (its recipe's ``model.init_adapter``), or None
    for a bare base. An adapter trained with ``lora.train_init_adapter`` replaced its starting adapter, so it
    sits where that one sat."""
    directory = adapter_dir
    for _ in range(MAX_STACK):
        recorded = directory / "recipe.yaml"
        raw = yaml.safe_load(recorded.read_text(encoding="utf-8")) if recorded.is_file() else None
        raw = raw if isinstance(raw, dict) else {}
        init = (raw.get("model") or {}).get("init_adapter")
        if not init or not (raw.get("lora") or {}).get("train_init_adapter"):
            return str(init) if init else None
        directory = init_adapter_dir_of(str(init), directory)
    raise ModelError(
        f"{adapter_dir} continues a chain of adapters (lora.train_init_adapter) more than {MAX_STACK} deep or "
        "looping back on itself; train from an adapter whose chain ends on the base."
    )


def init_adapter_dir_of(init: str, child: Path) -> Path:
    """``init``, the adapter ``child`` was trained from, as a local directory; a downloaded adapter (no run
    marker) may name only a Hub id there, as ``config.trust`` holds for every local path a stranger's recipe
    names."""
    if looks_local(init) and not (child / RUN_MARKER).is_file():
        raise ModelError(
            f"{child} was trained on top of the adapter '{init}' (its recipe.yaml's model.init_adapter), a local "
            "path on someone else's machine. Only an adapter trained on a bare base, or on top of a Hub adapter, "
            "can be loaded from a download."
        )
    try:
        return resolve_adapter_dir(init)
    except ModelError as exc:
        raise ModelError(
            f"{child} was trained on top of the adapter '{init}' (its recipe.yaml's model.init_adapter), which "
            f"cannot be loaded: {exc} Run from the folder that run was started in, or give its adapter there."
        ) from None


def adapter_stack(init_adapter: str) -> list[Path]:
    """Every adapter ``init_adapter`` needs under it, bottom first, ending with its own directory.

    An adapter trained from another (``model.init_adapter``) fits the base with that one merged in, which
    may itself sit on a third (an SFT → DPO → DPO chain): each is merged in turn."""
    stack = [init_adapter_dir(init_adapter)]
    while (under := sits_on(stack[0])) is not None:
        directory = init_adapter_dir_of(under, stack[0])
        if any(directory.resolve() == seen.resolve() for seen in stack) or len(stack) >= MAX_STACK:
            raise ModelError(
                f"model.init_adapter: {init_adapter} sits on a chain of adapters that loops back on itself or is "
                f"more than {MAX_STACK} deep ({', '.join(str(d) for d in (directory, *stack))}). Train from an "
                "adapter whose chain ends on the base."
            )
        stack.insert(0, directory)
    return stack


def load_base(model: ModelSection) -> Any:
    """The base, with ``model.init_adapter`` (and every adapter it sits on) merged into its weights when the
    recipe names one."""
    loaded = load_model(dataclasses.replace(model, init_adapter=None))
    if not model.init_adapter:
        return loaded
    return _merged(loaded, adapter_stack(model.init_adapter))


def _merged(model: Any, adapters: list[Path]) -> Any:
    from peft import PeftModel

    for directory in adapters:
        model = PeftModel.from_pretrained(model, str(directory)).merge_and_unload()
    return model


def load_policy(recipe: Recipe) -> Any:
    """The model training starts from: ``load_base``, or with ``lora.train_init_adapter`` ``model.init_adapter``
    loaded trainable on what it sits on (the trainer then adds no new adapter)."""
    if not recipe.lora.train_init_adapter:
        return load_base(recipe.model)
    from peft import PeftModel

    *under, init = adapter_stack(str(recipe.model.init_adapter))
    base = _merged(load_model(dataclasses.replace(recipe.model, init_adapter=None)), under)
    return PeftModel.from_pretrained(base, str(init), is_trainable=True)
