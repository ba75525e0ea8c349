"""Install footprint of the landformer wheel with and without its extras, and whether it resolves beside torchgeo.

Builds the wheel, resolves ``landformer[EXTRA]`` for Python 3.12 on x86-64 Linux (torchgeo 0.10 needs 3.12,
this machine has 3.11, and pip cannot resolve for another Python once a dependency ships only a source
archive, as torchgeo's antlr4 does; uv's resolver can, so it is installed into a throwaway venv), and adds up
the installed size of every resolved distribution as it lies in this environment (``make setup`` installs all
of them; one resolved at another version is counted at this environment's size, one this environment lacks is
listed as not measured). Nothing is installed. Needs the package registry, so it is not one of the ``bench_*``
scripts ``make bench`` runs. Writes ``benchmarks/results/install_footprint.json``.

    .venv/bin/python benchmarks/install_footprint.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import venv
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
TARGET = ["--python-version", "3.12", "--python-platform", "x86_64-manylinux_2_28"]
PINNED = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$")


def build_wheel(folder: Path) -> Path:
    """The landformer wheel, built from this checkout into ``folder`` (setuptools leaves ``build/`` in the
    checkout, which git ignores)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(folder)],
        check=True,
    )
    return next(folder.glob("landformer-*.whl"))


def resolver(folder: Path) -> Path:
    """uv, installed into a throwaway venv under ``folder``."""
    venv.create(folder / "resolver", with_pip=True)
    python = folder / "resolver" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "uv"], check=True)
    return folder / "resolver" / "bin" / "uv"


def resolve(uv: Path, requirements: list[str], folder: Path) -> dict[str, str]:
    """Version of every distribution an install of ``requirements`` into an empty Python 3.12 would bring; a
    RuntimeError with the resolver's reasons when they cannot be installed together."""
    listing = folder / "requirements.in"
    listing.write_text("\n".join(requirements) + "\n")
    command = [str(uv), "pip", "compile", *TARGET, "--no-header", "--no-annotate", "--quiet", str(listing)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' + '.join(requirements)} do not resolve together:\n{done.stderr}")
    resolved = {}
    for line in done.stdout.splitlines():
        if match := PINNED.match(line.strip()):
            resolved[match.group(1)] = match.group(2)
        elif line.strip().endswith(".whl"):  # the local landformer wheel
            name, version = Path(line.strip()).name.split("-")[:2]
            resolved[name] = version
    return resolved


def installed_sizes() -> dict[str, tuple[str, int]]:
    """Version and bytes on disk of each distribution of this environment, by normalized name."""
    sizes = {}
    for dist in metadata.distributions():
        sizes[_normalize(dist.metadata["Name"])] = (dist.version, sum(file.size or 0 for file in dist.files or []))
    return sizes


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def footprint(resolved: dict[str, str], sizes: dict[str, tuple[str, int]]) -> dict:
    """Distributions and GiB on disk; one resolved at another version than this environment's is counted at this
    environment's size (releases of one package a few versions apart differ by a few per cent)."""
    measured = {name: sizes[_normalize(name)][1] for name in resolved if _normalize(name) in sizes}
    largest = sorted(measured, key=lambda name: -measured[name])[:5]
    return {
        "distributions": len(resolved),
        "installed_gib": round(sum(measured.values()) / 2**30, 2),
        "largest": [f"{name} {measured[name] / 2**20:.0f} MiB" for name in largest],
        "not_measured": sorted(f"{name}=={version}" for name, version in resolved.items() if name not in measured),
        "other_version_here": sorted(
            f"{name}=={version}"
            for name, version in resolved.items()
            if name in measured and sizes[_normalize(name)][0] != version
        ),
    }


def main() -> None:
    sizes = installed_sizes()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wheel, uv = build_wheel(folder), resolver(folder)
        for variant, extra in VARIANTS.items():
            results[variant] = footprint(resolve(uv, [f"{wheel}{extra}"], folder), sizes)
            print(variant, json.dumps(results[variant]))
        alone = resolve(uv, [TORCHGEO], folder)
        for variant, extra in (("core + torchgeo", ""), ("all + torchgeo", "[all]")):
            beside = resolve(uv, [f"{wheel}{extra}", TORCHGEO], folder)
            added = {name: version for name, version in beside.items() if name not in alone}
            results[variant] = footprint(beside, sizes) | {
                "torchgeo": beside["torchgeo"],
                "torch": beside["torch"],
                "added_to_torchgeo_alone": footprint(added, sizes) | {"names": sorted(added)},
            }
            print(variant, json.dumps(results[variant]))
    out = HERE / "results" / "install_footprint.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
