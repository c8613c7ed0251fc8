"""`dpo-recipe export`: merged safetensors and GGUF read back against base + adapter, and what is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import TURN_MARKERS, invoke
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_recipe.deploy.export import TOLERANCES, export
from dpo_recipe.deploy.gguf_writer import write_gguf
from dpo_recipe.errors import ExportError, ModelError

TEXT = "<|im_start|>user\nAIとは何ですか？<|im_end|>\n<|im_start|>assistant\nAIとは技術です。"


@pytest.fixture(scope="module")
def base_plus_adapter(tiny_adapter: Path, tiny_model: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's own forward of base + adapter on TEXT: ``(input ids, logits)``, what every export must reproduce."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_adapter)
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(tiny_adapter)).eval()
    with torch.no_grad():
        return ids, model(ids).logits


def logits_of(model_dir: Path, ids: torch.Tensor, **kwargs: str) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs)
    with torch.no_grad():
        return model(ids).logits


def test_merged_safetensors_equal_base_plus_adapter_trained_token_rows_included(
    tiny_adapter: Path, tiny_model: Path, base_plus_adapter, tmp_path: Path
) -> None:
    ids, expected = base_plus_adapter
    out = tmp_path / "merged"
    result = export(tiny_adapter, out, fmt="safetensors")
    assert (result.tensor_type, result.check.max_abs_diff) == ("f32", pytest.approx(0, abs=1e-5))
    assert torch.allclose(logits_of(out, ids), expected, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_adapter).chat_template
    # the turn markers' rows are the trained ones (PEFT stores them as trainable_tokens_delta), not the base's
    rows = tokenizer.convert_tokens_to_ids(TURN_MARKERS)
    merged = load_file(out / "model.safetensors")["model.embed_tokens.weight"][rows]
    trained = next(
        v for k, v in load_file(tiny_adapter / "adapter_model.safetensors").items() if "trainable_tokens" in k
    )
    base = load_file(tiny_model / "model.safetensors")["model.embed_tokens.weight"][rows]
    assert torch.equal(merged, trained) and not torch.allclose(merged, base)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "safetensors" and manifest["files"]["model.safetensors"] > 0


@pytest.mark.parametrize(("dtype", "quant", "stored"), [("f16", None, "F16"), (None, "q8_0", "Q8_0")])
def test_gguf_reads_back_within_its_tolerance(
    tiny_adapter: Path, base_plus_adapter, tmp_path: Path, runner, dtype, quant, stored
) -> None:
    ids, expected = base_plus_adapter
    out = tmp_path / "gguf"
    args = ["export", "--adapter", tiny_adapter, "--out", out, *(["--dtype", dtype] if dtype else ["--quant", quant])]
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    assert f"Exported gguf ({dtype or quant}) to {out}" in result.output
    assert f"ollama create NAME -f {out / 'Modelfile'}" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "export.json", "model.gguf"]

    read_back = logits_of(out, ids, gguf_file="model.gguf")
    relative = float((read_back - expected).abs().max() / expected.abs().max())
    assert relative <= TOLERANCES[dtype or quant], relative
    same_argmax = float((read_back.argmax(-1) == expected.argmax(-1)).float().mean())
    assert same_argmax >= 0.9  # a random-init model has near ties; quantization may swap one of 24
    check = json.loads((out / "export.json").read_text())["logit_check"]  # export's own, on its probe
    assert check["relative_diff"] <= check["tolerance"] == TOLERANCES[dtype or quant] and check["same_argmax"] >= 0.9

    reader = gguf.GGUFReader(out / "model.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert (fields["general.architecture"], fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == (
        "llama",
        "gpt2",
        "gpt-2",
    )
    assert fields["general.file_type"] == gguf.LlamaFileType[f"MOSTLY_{stored}"]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == stored
    assert types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types  # tied to token_embd
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    assert tokenizer(TEXT)["input_ids"] == ids[0].tolist() and tokenizer.eos_token == "<|im_end|>"


def test_a_gguf_base_keeps_its_own_metadata(tiny_adapter: Path, tiny_model: Path, tmp_path: Path) -> None:
    """An adapter trained on a GGUF base: the export copies every key of that file (here one the
    writer never writes itself, general.license) and only replaces the type and chat template."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    plain = tmp_path / "plain.gguf"
    write_gguf(plain, base, AutoTokenizer.from_pretrained(tiny_model), "f32", None)
    source = tmp_path / "base.gguf"
    with_license(plain, source, "tiny-test-license")
    on_gguf = tmp_path / "adapter-on-gguf"
    shutil.copytree(tiny_adapter, on_gguf)
    recipe = (on_gguf / "recipe.yaml").read_text()
    (on_gguf / "recipe.yaml").write_text(recipe.replace("gguf_file: null", f"gguf_file: {source}"))

    result = export(on_gguf, tmp_path / "out", quant="q8_0")
    assert result.check.relative_diff <= TOLERANCES["q8_0"]
    written = gguf.GGUFReader(tmp_path / "out" / "model.gguf").fields
    original = gguf.GGUFReader(source).fields
    assert written["general.license"].contents() == "tiny-test-license"
    kept = [
        n for n in original if not n.startswith("GGUF.") and n not in ("general.file_type", "tokenizer.chat_template")
    ]
    assert [n for n in kept if written[n].contents() != original[n].contents()] == []
    assert written["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def with_license(plain: Path, target: Path, license_name: str) -> None:
    """``plain`` rewritten with one more key, as a GGUF made by another tool carries keys of its own."""
    reader = gguf.GGUFReader(plain)
    writer = gguf.GGUFWriter(target, "llama")
    for name, field in reader.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_license(license_name)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data), raw_shape=list(reversed(tensor.shape.tolist())))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------------------- refused, before any weight loads


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr("dpo_recipe.models.adapters.load_adapter_model", refuse)


def test_bad_options_and_outputs_fail_in_one_line_before_loading(
    tiny_adapter: Path, tmp_path: Path, no_weights
) -> None:
    with pytest.raises(ExportError, match=r"--quant q4_k_m: gguf-py cannot write it; it writes q8_0, .*llama-quantize"):
        export(tiny_adapter, tmp_path / "x", quant="q4_k_m")
    with pytest.raises(ExportError, match="--quant q8_0 applies to --format gguf only"):
        export(tiny_adapter, tmp_path / "x", fmt="safetensors", quant="q8_0")
    with pytest.raises(ExportError, match="--format onnx: choose one of safetensors, gguf"):
        export(tiny_adapter, tmp_path / "x", fmt="onnx")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "thesis.tex").write_text("mine")
    with pytest.raises(ExportError, match="already exists: choose another directory, or --overwrite"):
        export(tiny_adapter, tmp_path / "taken")
    with pytest.raises(ExportError, match=r"holds files 'dpo-recipe export' did not write \(thesis.tex\)"):
        export(tiny_adapter, tmp_path / "taken", overwrite=True)
    assert (tmp_path / "taken" / "thesis.tex").read_text() == "mine"
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    shutil.copy(tiny_adapter / "adapter_config.json", orphan)
    shutil.copy(tiny_adapter / "adapter_model.safetensors", orphan)
    with pytest.raises(ModelError, match="has no recipe.yaml naming its base model: pass --base MODEL"):
        export(orphan, tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orphan", "taken"]


def test_an_unsupported_architecture_is_named_with_the_supported_ones(
    tiny_adapter: Path, tmp_path: Path, no_weights
) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    config.num_attention_heads, config.num_key_value_heads = 4, 2
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen2")
    with pytest.raises(
        ExportError, match=r"architecture 'qwen2' is not supported \(supported: gemma3_text, gpt2, llama\)"
    ):
        export(tiny_adapter, tmp_path / "x", base=str(tmp_path / "qwen2"))


def test_a_full_disk_leaves_nothing_half_written(tiny_adapter: Path, tmp_path: Path, monkeypatch, record) -> None:
    def half_then_full(writer, **kwargs) -> None:
        for handle in writer.fout:
            handle.write(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", half_then_full)
    with record.case("fault"):
        with pytest.raises(ExportError) as err:
            export(tiny_adapter, tmp_path / "out")
        assert str(err.value) == (
            f"Writing the export to {tmp_path / 'out'} failed: No space left on device. Nothing was left there "
            "(the partial files were removed); free space or fix permissions and run the same command again."
        )
        assert list(tmp_path.iterdir()) == []


def test_a_read_back_over_its_tolerance_is_refused_and_not_kept(
    tiny_adapter: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(TOLERANCES, "f16", 0.0)
    with pytest.raises(
        ExportError, match=r"The exported gguf \(f16\) does not reproduce the merged model: .*Nothing was"
    ):
        export(tiny_adapter, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
