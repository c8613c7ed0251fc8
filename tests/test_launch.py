"""The packaged accelerate configs and the launcher that picks one (``dpo-recipe train``'s wrapper)."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from conftest import REPO

from dpo_recipe.cli import accelerate_launch_args

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
