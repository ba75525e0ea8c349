"""Run every ``benchmarks/bench_*.py`` script, then collect their JSON results into one Markdown table.

Each script measures its own baseline in the same run and writes ``benchmarks/results/<name>.json`` with a
``"summary"`` list of ``{"metric", "value", "unit", "baseline", "ratio", "target"}`` rows. ``--quick`` passes
``--quick`` to every script (smaller sizes, for a smoke run) and sends their JSON to ``results/quick/``, so a smoke
run never overwrites the committed full-run numbers the README quotes. ``--collect`` only rebuilds the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}"


def summary_table(results: list[Path]) -> str:
    lines = ["| benchmark | metric | value | baseline | ratio | target |", "|---|---|---|---|---|---|"]
    for path in results:
        data = json.loads(path.read_text())
        for row in data.get("summary", []):
            # A speedup "at equal realism" has no value when no setting reached equal realism.
            value = "none" if row["value"] is None else f"{row['value']:.4g} {row.get('unit', '')}".strip()
            baseline = "" if row.get("baseline") is None else f"{row['baseline']:.4g}"
            ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
            lines.append(
                f"| {path.stem} | {row['metric']} | {value} | {baseline} | {ratio} | {row.get('target', '')} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every benchmark")
    parser.add_argument("--collect", action="store_true", help="run nothing; rebuild summary.md from the JSON files")
    parser.add_argument("only", nargs="*", help="run only these benchmark names (e.g. bench_chips)")
    args = parser.parse_args()
    results_dir = RESULTS / "quick" if args.quick else RESULTS
    results_dir.mkdir(parents=True, exist_ok=True)
    scripts = [] if args.collect else sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [script for script in scripts if script.stem in args.only]
    failed = []
    environment = {**os.environ, "LANDFORMER_BENCH_RESULTS": str(results_dir)}
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        command = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        if subprocess.run(command, check=False, env=environment).returncode != 0:
            failed.append(script.stem)
    results = sorted(results_dir.glob("bench_*.json"))
    table = summary_table(results)
    (results_dir / "summary.md").write_text(f"Machine: {machine()}\n\n{table}\n")
    print(table)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
