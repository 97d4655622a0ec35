"""The `progsae` command: one verb per module in progsae/commands/, loaded only when used."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from progsae import __version__
from progsae.errors import ProgsaeError

# verb -> one-line help; the verb's module is progsae.commands.<verb> with add_arguments(p) and run(args) -> int
VERBS: dict[str, str] = {
    "synth": "write synthetic activations with planted features",
    "train": "train an SAE on an activation store",
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


def _verb_module(verb: str):
    return importlib.import_module(f"progsae.commands.{verb}")


def build_parser(verbs: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progsae", description="Progressive coding of sparse autoencoders.")
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
    try:
        return int(_verb_module(args.verb).run(args) or 0)
    except ProgsaeError as e:
        print(f"progsae {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"progsae {args.verb}: interrupted; finished work is saved, re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
