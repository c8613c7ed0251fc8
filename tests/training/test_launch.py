"""dpo_recipe.training.launch: the packaged accelerate configs, the one that fits, the command line, the
launcher's options."""

from __future__ import annotations

import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from conftest import REPO

from dpo_recipe.training.launch import (
    accelerate_command,
    accelerate_launch_args,
    launch_command,
    split_launcher_args,
    with_launcher_options,
)

CONFIGS = REPO / "recipes" / "accelerate"


@pytest.mark.parametrize(
    ("name", "kind", "processes", "check"),
    [
        ("cpu.yaml", DistributedType.NO, 1, lambda c: c.use_cpu),
        ("single_gpu.yaml", DistributedType.NO, 1, lambda c: not c.use_cpu and c.gpu_ids == "0"),
        ("multi_gpu.yaml", DistributedType.MULTI_GPU, 8, lambda c: c.gpu_ids == "all"),
        (
            "fsdp.yaml",
            DistributedType.FSDP,
            8,
            lambda c: c.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD" and c.fsdp_config["fsdp_use_orig_params"],
        ),
        ("deepspeed_zero2.yaml", DistributedType.DEEPSPEED, 8, lambda c: c.deepspeed_config["zero_stage"] == 2),
        (
            "deepspeed_zero3.yaml",
            DistributedType.DEEPSPEED,
            8,
            lambda c: c.deepspeed_config["zero_stage"] == 3 and c.deepspeed_config["zero3_save_16bit_model"],
        ),
    ],
)
def test_packaged_accelerate_configs_load_with_accelerate(name, kind, processes, check) -> None:
    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type == kind
    assert config.num_processes == processes and config.num_machines == 1
    assert check(config)


def test_launcher_picks_the_config_that_fits_this_cpu_machine() -> None:
    assert accelerate_launch_args(None, None) == ["--config_file", str(CONFIGS / "cpu.yaml")]
    two = accelerate_launch_args(None, 2)
    assert two[:3] == ["--multi_gpu", "--num_processes", "2"]
    assert accelerate_launch_args("my.yaml", 4) == ["--config_file", "my.yaml", "--num_processes", "4"]


def test_accelerate_command_runs_the_module_with_this_interpreter() -> None:
    command = accelerate_command("dpo_recipe.evaluation", ["--adapter", "a"], None, 3)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[3:6] == ["--multi_gpu", "--num_processes", "3"]  # CPU processes over gloo
    assert command[-4:] == ["-m", "dpo_recipe.evaluation", "--adapter", "a"]
    single = accelerate_command("dpo_recipe.train", ["--recipe", "x"])
    assert single[3:] == ["--config_file", str(CONFIGS / "cpu.yaml"), "-m", "dpo_recipe.train", "--recipe", "x"]


def test_launch_command_is_quoted_for_a_shell() -> None:
    command = launch_command("dpo_recipe.train", ["--recipe", "my recipe.yaml", "--set", "data.source=a b"])
    assert command == "accelerate launch -m dpo_recipe.train --recipe 'my recipe.yaml' --set 'data.source=a b'"


def test_launcher_options_split_off_the_module_arguments() -> None:
    launcher, rest = split_launcher_args(["--recipe", "x", "--num-processes", "2", "--set", "a.b=1"])
    assert launcher.num_processes == 2 and launcher.accelerate_config is None
    assert rest == ["--recipe", "x", "--set", "a.b=1"]
    _, kept = split_launcher_args(["--num", "2"])  # no abbreviations: a module's --num... is never taken
    assert kept == ["--num", "2"]


def test_launcher_options_are_checked(tmp_path, capsys) -> None:
    import argparse

    module = argparse.ArgumentParser(prog="m", description="the module")
    module.add_argument("--adapter", required=True)
    parser = with_launcher_options(module, "dpo-recipe eval")
    assert parser.description == "the module"
    for argv, words in (
        (["--adapter", "a", "--num-processes", "0"], "argument --num-processes: must be at least 1, not 0"),
        (["--adapter", "a", "--accelerate-config", str(tmp_path / "no.yaml")], "no.yaml is not an existing file"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2 and words in capsys.readouterr().err
    config = tmp_path / "plain.yaml"
    config.write_text("{}")
    parsed = parser.parse_args(["--adapter", "a", "--accelerate-config", str(config)])
    assert parsed.accelerate_config == str(config) and parsed.adapter == "a"


@pytest.mark.parametrize("name", ["fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_gpu_only_configs_are_refused_on_a_machine_without_gpus(name, tmp_path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    edited = tmp_path / name  # use_cpu: true does not make FSDP / DeepSpeed run on a CPU
    edited.write_text((CONFIGS / name).read_text().replace("use_cpu: false", "use_cpu: true"))
    parser = with_launcher_options(__import__("argparse").ArgumentParser(prog="m"), "dpo-recipe train")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--accelerate-config", str(edited)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 2  # usage + one line
    kind = "FSDP" if name == "fsdp.yaml" else "DEEPSPEED"
    assert f"{edited}: distributed_type {kind} shards the model over GPUs and this machine has none" in error
    assert "--num-processes N (DDP over gloo)" in error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the same file is fine where GPUs are
    assert parser.parse_args(["--accelerate-config", str(edited)]).accelerate_config == str(edited)
