"""The package's shape: stage subpackages that import one way (no cycle, no climb back up the pipeline),
recipe checks that import no torch, no crumb modules, and tests that mirror the source tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FORM_FIXTURES, REPO

PACKAGE = REPO / "dpo_recipe"

# The pipeline, first to last: a module may import from its own stage or an earlier one. The Hub's read side
# (ids, HTTP status, retries: utils.hub) is a leaf every stage may use; publishing comes after what it uploads.
STAGES = [
    ("dpo_recipe.errors", "dpo_recipe.utils"),
    ("dpo_recipe.config",),
    ("dpo_recipe.data",),
    ("dpo_recipe.models",),
    ("dpo_recipe.training",),
    ("dpo_recipe.evaluation",),
    # an objective reads its data, builds its trainer and scores its held-out report: after evaluation
    ("dpo_recipe.training.objectives",),
    # judges score sampled answers with the answer checks, the packed pass and adapters; on-policy pairs are
    # sampled by a policy and made by a judge
    ("dpo_recipe.judges",),
    # the held-out answers judged tuned against base (and a run's against another's: `dpo-recipe compare --judge`),
    # and the `dpo-recipe eval` front end, which scores an adapter by its objective and judges its answers
    (
        "dpo_recipe.evaluation.judged",
        "dpo_recipe.evaluation.compare",
        "dpo_recipe.evaluation.command",
        "dpo_recipe.evaluation.__main__",
    ),
    ("dpo_recipe.onpolicy",),
    ("dpo_recipe.artifacts",),
    ("dpo_recipe.deploy",),
    ("dpo_recipe.hub.publish",),
    # front ends: the run (python -m dpo_recipe.train), sweeps of runs, the Python API, the CLI over it
    ("dpo_recipe.train",),
    ("dpo_recipe.sweep",),
    ("dpo_recipe.iterate",),
    ("dpo_recipe.api",),
    ("dpo_recipe.cli", "dpo_recipe.__main__", "dpo_recipe"),
]


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Every dpo_recipe import of every module, the ones inside functions included: a lazy import still
    ties the two modules together, it only moves the moment the cycle bites."""
    modules = module_files()

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import; the layout test reads absolute ones"
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("dpo_recipe.") and owner(target) not in (name, "dpo_recipe"):
                    graph[name].add(owner(target))
    return graph


def stage_of(module: str) -> int:
    """The stage of the longest prefix that names ``module`` (``training.objectives`` before ``training``)."""
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(STAGES)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} belongs to no stage: add it to STAGES in {__file__}"
    return max(matches)[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path that ends where it started, or [] (depth-first search, colours)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40 and "dpo_recipe.training.trainer" in graph["dpo_recipe.training.objectives.dpo"]
    assert find_cycle(graph) == []


def test_every_import_points_to_the_same_or_an_earlier_stage() -> None:
    climbs = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if stage_of(target) > stage_of(module)
    ]
    assert climbs == []


def test_validating_a_recipe_and_linting_data_import_no_torch() -> None:
    """`recipes show`, `data lint` and load_recipe answer in a second: loss names and the other recipe
    vocabulary live in torch-free modules. (Forms that TRL's own converters split, hh / implicit / sharegpt,
    load TRL, and with it torch, on their first row: reusing TRL's semantics is worth that second.)"""
    code = "\n".join(
        [
            "import sys",
            "from click.testing import CliRunner",
            "from dpo_recipe.cli import cli",
            "from dpo_recipe.config.loader import load_recipe",
            "recipe = load_recipe('gemma3-270m-ja', ['training.loss_type=[sigmoid,sft]'])",
            "assert recipe.training.loss_type == ['sigmoid', 'sft'], recipe.training.loss_type",
            "runner = CliRunner()",
            "shown = runner.invoke(cli, ['recipes', 'show', 'tiny-ja', '--resolved'])",
            "assert shown.exit_code == 0 and 'learning_rate' in shown.output, shown.output",
            f"linted = runner.invoke(cli, ['data', 'lint', {str(FORM_FIXTURES / 'hh.standard.jsonl')!r}])",
            "assert linted.exit_code == 0, linted.output",
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# A module this short is a crumb of its neighbour's concern; __init__ / __main__ are entry points.
MIN_LINES = 35


def test_no_crumb_modules() -> None:
    short = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in module_files().items()
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert {name: lines for name, lines in short.items() if lines < MIN_LINES} == {}


ELSEWHERE = {  # test files named for what they run against rather than the module they test
    "test_real_hub": "publish",  # the same push, against huggingface.co (optional CI job)
    "test_llama_cpp": "export",  # exported files loaded by llama.cpp itself (CI job that builds it)
    "test_llama_cpp_judge": "endpoint",  # the openai judge against llama.cpp's own server (the same CI job)
}


# Modules without a test file of their own, each with the test file that runs it (and names it: checked below).
TESTED_THROUGH = {
    # the recipe's dataclasses, its value coercion, cross-key checks and names: loading recipes exercises them
    "config/schema": "tests/config/test_loader.py",
    "config/coercion": "tests/config/test_loader.py",
    "config/checks": "tests/config/test_loader.py",
    "config/vocabulary": "tests/config/test_loader.py",
    # the held-out report's Markdown, read beside the scores it renders
    "evaluation/report": "tests/evaluation/test_scoring.py",
    # the `evaluate` metric, loaded by path (evaluation.scoring.load_metric) and compared with its own sums there
    "evaluation/metrics/dpo_preference/dpo_preference": "tests/evaluation/test_scoring.py",
}


def test_tests_mirror_the_source_tree() -> None:
    """tests/<stage>/[<package>/]test_<module>.py tests dpo_recipe/<stage>/[<package>/]<module>.py, in both
    directions: every test file has its module, and every module its test file or a line in TESTED_THROUGH naming
    the test file that runs it. Tests at the top test the front ends or the whole (faults, packaging, this file)."""
    tests = REPO / "tests"
    mirrored = set()
    for test in tests.glob("*/**/test_*.py"):
        module = ELSEWHERE.get(test.stem, test.stem.removeprefix("test_"))
        source = PACKAGE / test.parent.relative_to(tests) / f"{module}.py"
        assert source.is_file(), f"{test.relative_to(REPO)} has no {source.relative_to(REPO)}"
        mirrored.add(source.relative_to(PACKAGE).with_suffix("").as_posix())
    stages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert stages <= {path.name for path in tests.iterdir() if path.is_dir()}, "a stage with no tests folder"
    modules = {
        path.relative_to(PACKAGE).with_suffix("").as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and path.parent != PACKAGE  # top: the front ends
    }
    assert sorted(modules - mirrored - set(TESTED_THROUGH)) == [], "modules with no test file: add one"
    assert sorted(set(TESTED_THROUGH) & mirrored) == [], "a module with its own test file: drop it from TESTED_THROUGH"
    for module, test in TESTED_THROUGH.items():
        assert module in modules, f"TESTED_THROUGH names {module}, which does not exist"
        text = (REPO / test).read_text(encoding="utf-8")
        assert module.split("/")[-1] in text, f"{test} does not name {module}, which TESTED_THROUGH says it tests"


@pytest.mark.parametrize("module", ["dpo_recipe.train", "dpo_recipe.evaluation", "dpo_recipe"])
def test_module_entry_points_answer_help(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage:" in done.stdout or "usage:" in done.stdout
