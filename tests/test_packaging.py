import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-editable wheel, built the way a release would be."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("dpo_recipe-*.whl")
    return built


def test_wheel_carries_every_subpackage_recipes_cards_and_topics(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in REPO.glob("dpo_recipe/**/*.py"):  # a .gitignore pattern once dropped dpo_recipe/data/ whole
        assert str(module.relative_to(REPO)) in names, module
    for recipe in REPO.glob("recipes/**/*.yaml"):
        assert f"dpo_recipe/{recipe.relative_to(REPO)}" in names
    for card in REPO.glob("cards/*.md"):
        assert f"dpo_recipe/cards/{card.name}" in names
    assert {f"dpo_recipe/data/topics/{d}.json" for d in ("ai", "programming", "data_science")} <= names
    assert "dpo_recipe/evaluation/metrics/dpo_preference/dpo_preference.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dpo-recipe = dpo_recipe.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_packaged_dirs_resolve_from_an_unpacked_wheel(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from dpo_recipe.config.loader import recipes_dir; print(recipes_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == str(site / "dpo_recipe" / "recipes")


def test_github_workflows_pass_actionlint() -> None:
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.fail("actionlint is not installed: pip install -e '.[dev]'")
    workflows = sorted(str(p) for p in (REPO / ".github" / "workflows").glob("*.yml"))
    assert workflows
    result = subprocess.run([actionlint, "-no-color", *workflows], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_github_workflows_have_no_zizmor_findings() -> None:
    """Actions pinned to commits, no persisted checkout credentials: CI's own supply chain (offline audits)."""
    zizmor = shutil.which("zizmor")
    if zizmor is None:
        pytest.fail("zizmor is not installed: pip install -e '.[dev]'")
    result = subprocess.run([zizmor, "--offline", str(REPO / ".github" / "workflows")], capture_output=True, text=True)
    assert result.returncode == 0 and "No findings to report" in result.stdout, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck() -> None:
    """benchmarks/gpu_check.sh runs only where a GPU is lent: a slip in it must show here, on CPU."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: pip install -e '.[dev]'")
    scripts = sorted(str(p) for p in (REPO / "benchmarks").glob("*.sh"))
    assert scripts
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
