"""Install footprint of the landformer wheel with and without its extras, and whether it resolves beside torchgeo.

Builds the wheel, asks pip to resolve ``landformer[EXTRA]`` (``pip install --dry-run --report``, nothing is
installed) for Python 3.12 on Linux, and adds up the installed size of every resolved distribution as it lies
in this environment (``make setup`` installs all of them, at the versions requirements.lock pins; one this
environment lacks is listed as not measured). Needs the package registry, so it is
not one of the ``bench_*`` scripts ``make bench`` runs. Writes ``benchmarks/results/install_footprint.json``.

    .venv/bin/python benchmarks/install_footprint.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = {
    "core": "",
    "embeddings": "[embeddings]",
    "tracking": "[tracking]",
    "umap": "[umap]",
    "data": "[data]",
    "all": "[all]",
}
TORCHGEO = "torchgeo==0.10.*"


def build_wheel(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(folder)],
        check=True,
    )
    return next(folder.glob("landformer-*.whl"))


def resolve(requirements: list[str], report: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution pip would install for ``requirements`` into an empty Python 3.12."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    # pip asks for --target with --python-version; nothing is written there in a dry run.
    command += ["--python-version", "3.12", "--only-binary=:all:", "--target", str(report.with_suffix(""))]
    command += ["--report", str(report), *requirements]
    subprocess.run(command, check=True, capture_output=True, text=True)
    installs = json.loads(report.read_text())["install"]
    return sorted((item["metadata"]["name"], item["metadata"]["version"]) for item in installs)


def installed_sizes() -> dict[str, tuple[str, int]]:
    """Version and bytes on disk of each distribution of this environment, by normalized name."""
    sizes = {}
    for dist in metadata.distributions():
        sizes[_normalize(dist.metadata["Name"])] = (dist.version, sum(file.size or 0 for file in dist.files or []))
    return sizes


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def footprint(resolved: list[tuple[str, str]], sizes: dict[str, tuple[str, int]]) -> dict:
    """Distributions and GiB on disk; one that pip resolves at another version than this environment's is
    counted at this environment's size (a patch release apart: the same size to a few per cent)."""
    measured = {name: sizes[_normalize(name)][1] for name, _ in resolved if _normalize(name) in sizes}
    largest = sorted(measured, key=lambda name: -measured[name])[:5]
    return {
        "distributions": len(resolved),
        "installed_gib": round(sum(measured.values()) / 2**30, 2),
        "largest": [f"{name} {measured[name] / 2**20:.0f} MiB" for name in largest],
        "not_measured": [f"{name}=={version}" for name, version in resolved if _normalize(name) not in sizes],
        "other_version_here": [
            f"{name}=={version}"
            for name, version in resolved
            if _normalize(name) in sizes and sizes[_normalize(name)][0] != version
        ],
    }


def main() -> None:
    sizes = installed_sizes()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        for variant, extra in VARIANTS.items():
            results[variant] = footprint(resolve([f"{wheel}{extra}"], Path(tmp) / f"{variant}.json"), sizes)
            print(variant, json.dumps(results[variant]))
        beside = resolve([str(wheel), TORCHGEO], Path(tmp) / "torchgeo.json")
        results["core + torchgeo"] = footprint(beside, sizes)
        results["core + torchgeo"]["torchgeo"] = next(v for n, v in beside if n == "torchgeo")
        print("core + torchgeo", json.dumps(results["core + torchgeo"]))
    out = HERE / "results" / "install_footprint.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
