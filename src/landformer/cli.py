"""The one ``landformer`` command. Each pipeline registers its own sub-commands; this file only dispatches.

User mistakes (:class:`~landformer.core.errors.UserError`), and an optional package that is not installed (named
with its pip extra), become one line on stderr and exit code 2;
``--debug`` shows the full traceback instead. A command's ``--out`` is checked, locked and cleaned up after a
failure by :func:`landformer.core.io.output_guard`; SIGTERM unwinds like Ctrl-C, so temporary files go too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from landformer import __version__
from landformer.core.commands import Formatter, guarded_output, optional_arguments_not_required
from landformer.core.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from landformer import demo
    from landformer.core import cli as core_cli
    from landformer.embeddings import cli as embeddings_cli
    from landformer.forecast import cli as forecast_cli
    from landformer.geoloc import cli as geoloc_cli
    from landformer.landcover import cli as landcover_cli
    from landformer.synth import cli as synth_cli
    from landformer.terrain import cli as terrain_cli

    parser = argparse.ArgumentParser(
        prog="landformer",
        description="Deep generative and predictive models of the land surface.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"landformer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(title="pipelines and tools", metavar="COMMAND")
    for module in (core_cli, synth_cli, landcover_cli, terrain_cli, embeddings_cli, geoloc_cli, forecast_cli, demo):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the sub-command.
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    parser = build_parser()
    if "--print-config" in argv:
        optional_arguments_not_required(parser)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    if hasattr(args, "deprecated_alias"):
        print(f"landformer: {args.deprecated_alias}", file=sys.stderr)
    from landformer.core.io import Terminated, signals_as_exceptions

    try:
        with signals_as_exceptions(), guarded_output(args):
            args.func(args)
    except (UserError, ModuleNotFoundError) as err:
        from landformer.core.extras import missing_extra

        error = missing_extra(err) if isinstance(err, ModuleNotFoundError) else err
        if debug or error is None:
            raise
        print(f"landformer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"landformer: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
