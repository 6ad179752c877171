"""The ``referencelcm`` command line: ``animate``, ``extract-guidance``, ``synth``, ``convert-champ``, ``demo``.

Every sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; this file only
dispatches. Bad input (``ValueError``, ``FileNotFoundError``) and a missing optional dependency
(:class:`~referencelcm.arguments.MissingDependencyError`, saying what to install) are printed as one line and exit with
status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .arguments import MissingDependencyError

# name -> (module, one-line help); modules are imported lazily so `--help` stays fast.
SUBCOMMANDS = {
    "animate": ("referencelcm.animate", "animate a reference image with a pose-guidance folder or a video"),
    "extract-guidance": ("referencelcm.extract.cli",
                         "make a guidance folder (skeletons, masks) from a video of a person, offline"),
    "synth": ("referencelcm.data.synthdance.cli", "generate a SynthDance dataset in Champ's layout"),
    "convert-champ": ("referencelcm.convert.champ", "convert Champ checkpoints into a pipeline folder"),
    "demo": ("referencelcm.demo", "start the web demo (Gradio): animate in the browser"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="referencelcm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(subparser)
        subparser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, MissingDependencyError) as error:
        print(f"referencelcm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
