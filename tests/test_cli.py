"""The command line as a whole: every sub-command has --help, user errors are one line and exit 2."""

from __future__ import annotations

import argparse
import re

import pytest

from landformer import __version__
from landformer.cli import build_parser, main


def _all_command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_all_command_paths(child, (*prefix, name)))
    return paths


def test_every_subcommand_has_help_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _all_command_paths(build_parser())
    assert ("demo",) in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: landformer " + " ".join(path)), path
        flat = " ".join(out.split())
        assert "(default: None)" not in flat, path  # says nothing to the reader
        assert not re.search(r"\(default[^)]*\)\s*\(default", flat), path  # a default named twice


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"landformer {__version__}"


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.tif"
    code = main(["data", "chips", str(missing), "--out", str(tmp_path / "chips.npz")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("landformer: error: ")
    assert str(missing) in err
    assert "Traceback" not in err
    assert not (tmp_path / "chips.npz").exists()


def test_debug_anywhere_shows_the_traceback(tmp_path) -> None:
    from landformer.core.errors import UserError

    with pytest.raises(UserError):
        main(["data", "chips", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "c.npz"), "--debug"])
