"""The demo's run-folder index: every step's numbers and pictures on one page."""

from __future__ import annotations

from pathlib import Path

import pytest

from landformer.cli import main
from landformer.demo import _numbers, _pictures, write_index


def test_index_shows_numbers_and_pictures_with_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "landcover").mkdir()
    sample = tmp_path / "landcover" / "samples.png"
    sample.write_bytes(b"png")
    result = {
        "bits_per_pixel": 0.6681,
        "skill": [0.1, None],
        "test_r2": {"ridge": 0.02, "sft": 0.08},
        "samples_png": str(sample),
        "missing_png": str(tmp_path / "gone.png"),
        "model": str(tmp_path / "landcover" / "model.safetensors"),
        "pictures": [str(sample)],
        "enabled": True,
    }
    assert _numbers(result) == {"bits_per_pixel": 0.6681, "skill": [0.1, None], "test_r2": {"ridge": 0.02, "sft": 0.08}}
    assert _pictures(result) == [str(sample), str(sample)]
    index = write_index(tmp_path, {"landformer": "0.1", "seed": 3, "steps": {"landcover": result}})
    text = index.read_text()
    assert text.count("<img src='landcover/samples.png'") == 1  # listed once although named twice
    assert "gone.png" not in text and str(tmp_path) not in text
    assert "<td>bits_per_pixel</td><td>0.6681</td>" in text
    assert "<td>skill</td><td>0.1, n/a</td>" in text
    assert "<td>test_r2</td><td>ridge: 0.02, sft: 0.08</td>" in text


def test_bad_thread_count_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--threads", "-1", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert err == "landformer: error: demo: --threads -1 should be 0 (torch's default) or a positive count\n"
    assert not (tmp_path / "demo").exists()  # refused before anything is written
