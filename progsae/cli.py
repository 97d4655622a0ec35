"""The `progsae` command: one verb per module in progsae/commands/, loaded only when used."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from progsae import __version__
from progsae.errors import ProgsaeError
from progsae.outputs import release_all

# verb -> one-line help; the verb's module is progsae.commands.<verb> with add_arguments(p) and run(args) -> int
VERBS: dict[str, str] = {
    "synth": "write synthetic activations with planted features",
    "train": "train SAEs on an activation store, or streamed from a running model",
    "collect": "collect activations from a language model into a store",
    "importance": "measure latent importance and fit its power law",
    "prune": "sort an SAE by importance and prune it to any size",
    "sort": "sort an SAE's latents by importance into a full-size SAE",
    "eval": "evaluate SAEs at any sizes",
    "reproduce": "run the whole study and write the report",
    "import": "import an SAE trained by another library",
    "export": "export a progsae SAE to another library's format",
    "info": "describe an SAE folder or an activation store",
}


class _OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line on stderr (exit 2), like every other bad input; --help shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _verb_module(verb: str):
    return importlib.import_module(f"progsae.commands.{verb}")


def build_parser(verbs: list[str] | None = None) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="progsae", description="Progressive coding of sparse autoencoders.")
    parser.add_argument("--version", action="version", version=f"progsae {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, help_text in VERBS.items():
        if verbs is not None and verb not in verbs:
            sub.add_parser(verb, help=help_text)
            continue
        try:
            module = _verb_module(verb)
        except ModuleNotFoundError as e:
            if e.name != f"progsae.commands.{verb}":
                raise
            continue  # verb not built yet
        p = sub.add_parser(verb, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([verb] if verb in VERBS else None)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    rc = 1
    try:
        rc = int(_verb_module(args.verb).run(args) or 0)
        return rc
    except ProgsaeError as e:
        print(f"progsae {args.verb}: error: {e}", file=sys.stderr)
        rc = 2
        return rc
    except KeyboardInterrupt:
        print(f"progsae {args.verb}: interrupted; finished work is saved, re-run the same command to resume", file=sys.stderr)
        rc = 130
        return rc
    except BrokenPipeError:
        os._exit(1)
    except OSError as e:  # what no check can foresee: a disk that fills, a permission that changes mid-run
        where = f"{e.filename}: " if e.filename else ""
        print(f"progsae {args.verb}: error: {where}{e.strerror or e}", file=sys.stderr)
        rc = 2
        return rc
    finally:
        release_all(failed=rc != 0)  # the output locks this verb took


if __name__ == "__main__":
    sys.exit(main())
