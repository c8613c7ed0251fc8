"""Round trips through the real `huggingface_hub`, `datasets` and `peft` clients against `tests/hub_server.py`.

Nothing here monkeypatches a client method: the clients are only pointed at the local server. In this process that
means the `huggingface_hub.constants` read from the environment at import time (ENDPOINT, offline mode, cache);
the `datasets` and `peft` round trips run in fresh subprocesses that get the environment before any import.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import OTHER, READ, WRITE, run_client
from hub_server import LocalHub


def test_whoami(hub: LocalHub):
    from huggingface_hub import HfApi, get_session
    from huggingface_hub.errors import HfHubHTTPError

    assert HfApi(token=WRITE).whoami(cache=False)["name"] == "alice"
    assert HfApi(token=READ).whoami(cache=False)["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_not_a_token").whoami(cache=False)
    assert err.value.response.status_code == 401
    assert get_session().get(f"{hub.endpoint}/api/whoami-v2").status_code == 401


def test_model_upload_download_revisions(hub: LocalHub, tmp_path: Path):
    from huggingface_hub import HfApi, HfFileSystem, get_session, hf_hub_download, hf_hub_url

    api = HfApi(token=WRITE)
    folder = tmp_path / "model"
    folder.mkdir()
    text = "こんにちは, hub\n".encode()
    weights = os.urandom(1536 * 1024)  # > 1 MB binary: goes through preupload "lfs" + LFS batch/PUT/verify
    (folder / "readme.txt").write_bytes(text)
    (folder / "weights.bin").write_bytes(weights)

    url = api.create_repo("alice/model")
    assert url.repo_id == "alice/model"
    api.create_repo("alice/model", exist_ok=True)  # 409 handled by the client
    first = api.upload_folder(repo_id="alice/model", folder_path=folder, commit_message="add files")
    assert len(first.oid) == 40

    assert api.model_info("alice/model").sha == first.oid
    assert sorted(api.list_repo_files("alice/model")) == [".gitattributes", "readme.txt", "weights.bin"]
    siblings = {s.rfilename: s for s in api.model_info("alice/model", files_metadata=True).siblings}
    assert siblings["weights.bin"].lfs is not None and siblings["weights.bin"].lfs.size == len(weights)
    assert siblings["readme.txt"].lfs is None
    cache = tmp_path / "cache"
    assert Path(hf_hub_download("alice/model", "readme.txt", cache_dir=cache)).read_bytes() == text
    assert Path(hf_hub_download("alice/model", "weights.bin", cache_dir=cache)).read_bytes() == weights

    ranged = get_session().get(hf_hub_url("alice/model", "weights.bin"), headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == weights[100:200]
    with HfFileSystem(token=WRITE).open("alice/model/weights.bin", "rb", block_size=64) as f:
        f.seek(1000)
        assert f.read(50) == weights[1000:1050]

    second = api.upload_file(path_or_fileobj=b"v2\n", path_in_repo="readme.txt", repo_id="alice/model")
    assert second.oid != first.oid
    assert api.model_info("alice/model").sha == second.oid
    assert api.model_info("alice/model", revision=first.oid).sha == first.oid
    assert Path(hf_hub_download("alice/model", "readme.txt", cache_dir=cache)).read_bytes() == b"v2\n"
    old = hf_hub_download("alice/model", "readme.txt", revision=first.oid, cache_dir=tmp_path / "cache2")
    assert Path(old).read_bytes() == text
    # An unchanged file is skipped by the client (preupload returns the current oid): no empty commit.
    same = api.upload_file(path_or_fileobj=b"v2\n", path_in_repo="readme.txt", repo_id="alice/model")
    assert same.oid == second.oid


def test_dataset_round_trip(hub: LocalHub):
    rows = {
        "train": {"text": ["今日は晴れです。", "猫が好きです。", "東京に行きます。"], "label": [0, 1, 0]},
        "test": {"text": ["ありがとう。"], "label": [1]},
    }
    run_client(f"""
        import json
        from datasets import Dataset, DatasetDict
        rows = {rows!r}
        DatasetDict({{k: Dataset.from_dict(v) for k, v in rows.items()}}).push_to_hub("alice/ds")
        print(json.dumps({{}}))
    """)
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files("alice/ds", repo_type="dataset")
    assert "README.md" in files and any(f.startswith("data/train-") and f.endswith(".parquet") for f in files)
    loaded = run_client("""
        import json
        from datasets import load_dataset
        ds = load_dataset("alice/ds")
        print(json.dumps({split: ds[split].to_dict() for split in ds}, ensure_ascii=False))
    """)
    assert loaded == rows


def test_peft_adapter_round_trip(hub: LocalHub, tmp_path: Path):
    base, logits = tmp_path / "base", tmp_path / "logits.pt"
    run_client(f"""
        import json, torch
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=128)
        LlamaForCausalLM(config).save_pretrained({str(base)!r})
        model = get_peft_model(LlamaForCausalLM.from_pretrained({str(base)!r}),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_()
        model.eval()
        model.push_to_hub("alice/adapter")
        with torch.no_grad():
            torch.save(model(torch.arange(10)[None]).logits, {str(logits)!r})
        print(json.dumps({{}}))
    """)
    from huggingface_hub import HfApi

    info = HfApi().model_info("alice/adapter", files_metadata=True)
    assert {s.rfilename: s.lfs is not None for s in info.siblings}["adapter_model.safetensors"]
    result = run_client(f"""
        import json, torch
        from peft import PeftModel
        from transformers import LlamaForCausalLM
        model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained({str(base)!r}), "alice/adapter")
        model.eval()
        with torch.no_grad():
            out = model(torch.arange(10)[None]).logits
        expected = torch.load({str(logits)!r})
        print(json.dumps({{"equal": torch.equal(out, expected), "lora_changes": not torch.equal(out, 0 * out)}}))
    """)
    assert result == {"equal": True, "lora_changes": True}


def test_private_repo_and_read_only_token(hub: LocalHub):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    owner = HfApi(token=WRITE)
    owner.create_repo("alice/secret", private=True)
    sha = owner.upload_file(path_or_fileobj=b"hidden", path_in_repo="a.txt", repo_id="alice/secret").oid

    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=OTHER).model_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "a.txt", token=False, cache_dir=hub.store.root / "no-token-cache")
    info = HfApi(token=READ).model_info("alice/secret")
    assert info.private and info.sha == sha

    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=READ).upload_file(path_or_fileobj=b"nope", path_in_repo="b.txt", repo_id="alice/secret")
    assert err.value.response.status_code in (401, 403)
    assert owner.model_info("alice/secret").sha == sha
    assert sorted(owner.list_repo_files("alice/secret")) == [".gitattributes", "a.txt"]


def test_commit_is_all_or_nothing(hub: LocalHub):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=WRITE)
    api.create_repo("alice/atomic")
    first = api.upload_file(path_or_fileobj=b"one", path_in_repo="one.txt", repo_id="alice/atomic").oid
    second = api.upload_file(path_or_fileobj=b"two", path_in_repo="two.txt", repo_id="alice/atomic").oid

    broken = [CommitOperationAdd("three.txt", b"three"), CommitOperationDelete("missing.txt")]
    with pytest.raises(HfHubHTTPError):
        api.create_commit("alice/atomic", operations=broken, commit_message="half")
    stale = [CommitOperationAdd("three.txt", b"three")]
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit("alice/atomic", operations=stale, commit_message="stale", parent_commit=first)
    assert err.value.response.status_code == 412
    assert api.model_info("alice/atomic").sha == second
    assert sorted(api.list_repo_files("alice/atomic")) == [".gitattributes", "one.txt", "two.txt"]


def test_card_validation_rejects_bad_metadata(hub: LocalHub):
    from huggingface_hub import ModelCard, get_session

    good = "---\nlanguage: [ja]\nmodel-index:\n- name: m\n  results:\n  - task: {type: text-generation}\n"
    good += "    dataset: {type: alice/prefs, name: prefs}\n    metrics: [{type: reward_accuracy, value: 0.9}]\n---\n"
    ModelCard(good).validate()
    broken = good.replace("dataset: {type: alice/prefs, name: prefs}", "dataset: {name: prefs}")
    answer = get_session().post(f"{hub.endpoint}/api/validate-yaml", json={"repoType": "model", "content": broken})
    assert answer.status_code == 400 and 'model-index[0].results[0].dataset" needs' in answer.text
    with pytest.raises(ValueError, match='"license" must be a string'):
        ModelCard("---\nlicense: [1, 2]\n---\ntext\n").validate()


def test_delete_repo(hub: LocalHub):
    from huggingface_hub import HfApi

    api = HfApi(token=WRITE)
    api.create_repo("alice/short-lived")
    with pytest.raises(Exception, match="403"):
        HfApi(token=OTHER).delete_repo("alice/short-lived")
    api.delete_repo("alice/short-lived")
    assert not api.repo_exists("alice/short-lived")
    api.create_repo("alice/short-lived")  # the name is free again
