"""How a module runs under ``accelerate launch``: the launcher's own options and its command line.

``dpo-recipe train`` and ``dpo-recipe eval`` both start a module (``dpo_recipe.train``,
``dpo_recipe.evaluation``) under accelerate; the options that only the launcher reads are declared
here once, and so is the command line, so the two commands (and the resume hints that a stopped run
prints) cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


def first_process() -> bool:
    """Whether this is the launch's first process (``RANK`` 0, or no launcher), before accelerate's state
    exists: what is printed once, or checked once, happens here."""
    return os.environ.get("RANK", "0") == "0"


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _launchable_config(text: str) -> str:
    """An accelerate config file that exists and whose launch this machine can run (``hardware``)."""
    import yaml

    from dpo_recipe.models.hardware import gpu_only_launch_problem

    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not an existing file")
    try:
        settings = yaml.safe_load(Path(text).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text} is not a YAML / JSON accelerate config ({exc})") from None
    distributed_type = settings.get("distributed_type", "NO") if isinstance(settings, dict) else "NO"
    problem = gpu_only_launch_problem(str(distributed_type), text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def launcher_parser() -> argparse.ArgumentParser:
    """The options that go to ``accelerate launch``, not to the module: a parent for the CLI's parsers.

    ``allow_abbrev`` is off so that splitting them off a command line never takes a module's option
    for one of them."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("launcher (accelerate)")
    group.add_argument(
        "--accelerate-config",
        metavar="FILE",
        type=_launchable_config,
        help="An accelerate config file (FSDP, DeepSpeed, multi-node). Default: the packaged one for "
        "this machine (CPU, one GPU, or DDP over all GPUs).",
    )
    group.add_argument(
        "--num-processes", type=positive_int, metavar="N", help="Processes to launch (default: GPU count or 1)."
    )
    return parser


def with_launcher_options(module_parser: argparse.ArgumentParser, prog: str) -> argparse.ArgumentParser:
    """``module_parser``'s options plus the launcher's, for a ``dpo-recipe`` sub-command named ``prog``."""
    return argparse.ArgumentParser(
        prog=prog,
        description=module_parser.description,
        parents=[module_parser, launcher_parser()],
        add_help=False,  # the module parser's -h/--help comes with it
    )


def split_launcher_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """``(launcher options, the module's own arguments)`` of a ``dpo-recipe train/eval`` command line."""
    return launcher_parser().parse_known_args(list(argv))


def accelerate_launch_args(config_file: str | None, num_processes: int | None) -> list[str]:
    """The packaged accelerate config that fits this machine, unless the user names one."""
    import torch

    from dpo_recipe.utils.files import packaged_dir

    if config_file:
        args = ["--config_file", config_file]
        return args + (["--num_processes", str(num_processes)] if num_processes else [])
    configs = packaged_dir("recipes") / "accelerate"
    gpus = torch.cuda.device_count()
    processes = num_processes or max(1, gpus)
    if processes > 1 and gpus == 0:  # CPU processes talk over gloo; the trainer asks for CPU itself
        return [
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    if processes > 1:
        return ["--config_file", str(configs / "multi_gpu.yaml"), "--num_processes", str(processes)]
    return ["--config_file", str(configs / ("single_gpu.yaml" if gpus else "cpu.yaml"))]


def accelerate_command(
    module: str, args: Sequence[str], config_file: str | None = None, num_processes: int | None = None
) -> list[str]:
    """The argv that runs ``python -m module args`` under ``accelerate launch`` with this interpreter."""
    launch = accelerate_launch_args(config_file, num_processes)
    return [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", module, *args]


def launch_command(module: str, args: Sequence[str]) -> str:
    """The shell command a person types to run ``module`` again, e.g. in a resume hint."""
    return shlex.join(["accelerate", "launch", "-m", module, *args])
