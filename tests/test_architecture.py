"""The house rules, checked on the source: one skeleton in every pipeline, and imports that only run downhill.

core <- synth <- the five pipelines <- the top-level CLI and demo. Core imports no pipeline and not the top-level
CLI; a pipeline imports no other pipeline; ``model.py`` is plain PyTorch (no Lightning, no file I/O); no file
imports, directly or through others, a file that imports it back. See docs/architecture.md.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "landformer"
PIPELINES = ("landcover", "terrain", "embeddings", "geoloc", "forecast")
SKELETON = ("model", "task", "data", "train", "export", "evaluate", "config", "cli")
# Modules a model file may not import: training frameworks and anything that reads or writes files.
NOT_IN_MODEL = ("lightning", "rasterio", "landformer.core.io", "landformer.core.raster", "landformer.core.export")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at its top or inside a function (``from a import b`` yields ``a.b`` when
    that is a module of ours, else ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if source_of(candidate) is not None else base


def source_of(module: str) -> Path | None:
    if not module.startswith("landformer"):
        return None
    relative = Path(*module.split("."))
    for path in (PACKAGE.parent / relative.with_suffix(".py"), PACKAGE.parent / relative / "__init__.py"):
        if path.is_file():
            return path
    return None


FILES = sorted(PACKAGE.rglob("*.py"))
IMPORTS = {module_name(path): {m for m in imported_modules(path) if source_of(m) is not None} for path in FILES}


def owner(module: str) -> str:
    """The room a module lives in: core, synth, a pipeline, or the top level (cli, demo, __main__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "top"


def test_core_imports_no_pipeline_and_not_the_cli() -> None:
    wrong = {
        module: sorted(m for m in imports if owner(m) not in ("core",) and m != "landformer")
        for module, imports in IMPORTS.items()
        if owner(module) == "core"
    }
    assert {module: bad for module, bad in wrong.items() if bad} == {}


def test_synth_imports_only_core() -> None:
    wrong = {
        module: sorted(m for m in imports if owner(m) not in ("core", "synth") and m != "landformer")
        for module, imports in IMPORTS.items()
        if owner(module) == "synth"
    }
    assert {module: bad for module, bad in wrong.items() if bad} == {}


def test_pipelines_import_no_other_pipeline_and_not_the_cli() -> None:
    wrong = {}
    for module, imports in IMPORTS.items():
        room = owner(module)
        if room in PIPELINES:
            bad = sorted(m for m in imports if owner(m) not in ("core", "synth", room) and m != "landformer")
            if bad:
                wrong[module] = bad
    assert wrong == {}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_every_pipeline_has_the_skeleton(pipeline: str) -> None:
    folder = PACKAGE / pipeline
    missing = [role for role in SKELETON if not (folder / f"{role}.py").is_file()]
    assert missing == []
    train = import_module(f"landformer.{pipeline}.train").train
    assert list(inspect.signature(train).parameters)[:3] == ["recipe", "run_dir", "resume"]
    export = import_module(f"landformer.{pipeline}.export")
    assert callable(export.save) and callable(export.load)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_model_files_are_plain_pytorch(pipeline: str) -> None:
    path = PACKAGE / pipeline / "model.py"
    imports = set(imported_modules(path))
    assert sorted(m for m in imports if m.startswith(NOT_IN_MODEL)) == []
    text = path.read_text(encoding="utf-8")
    assert "open(" not in text and "write_" not in text


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_tasks_hold_their_network_as_model(pipeline: str) -> None:
    """Every LightningModule in ``task.py`` keeps its network as ``self.model``, so one export path serves all."""
    tree = ast.parse((PACKAGE / pipeline / "task.py").read_text(encoding="utf-8"))
    tasks = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any("Task" in ast.unparse(base) or "Lightning" in ast.unparse(base) for base in node.bases)
    ]
    assert tasks
    for task in tasks:
        assigned = {
            ast.unparse(target)
            for node in ast.walk(task)
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        }
        inherits = any(ast.unparse(base) in {t.name for t in tasks} for base in task.bases)
        assert "self.model" in assigned or inherits, task.name


def test_no_import_circle() -> None:
    """No file reaches itself through the imports of the files it imports (inside functions too)."""
    circles = []
    for start in IMPORTS:
        seen, stack = set(), [start]
        while stack:
            current = stack.pop()
            for nxt in IMPORTS.get(current, ()):
                if nxt == start and current != start:
                    circles.append(start)
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    assert sorted(set(circles)) == []
