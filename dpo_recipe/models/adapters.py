"""Trained LoRA adapters: found locally or on the Hub, checked against their base, then loaded.

An adapter only fits the base it was trained on, and a pickle file from an untrusted source runs
code when it is unpickled; both are refused here with the fix named, before any weights load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dpo_recipe.config.loader import load_recipe
from dpo_recipe.config.schema import ModelSection, Recipe
from dpo_recipe.config.trust import RUN_MARKER, FetchedRecipe, refuse_untrusted
from dpo_recipe.errors import ModelError
from dpo_recipe.models.loading import load_model, load_tokenizer, skeleton_model

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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
    model = PeftModel.from_pretrained(load_model(base), str(adapter_dir))
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
