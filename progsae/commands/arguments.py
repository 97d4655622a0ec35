"""Arguments several verbs share: comma-separated lists, the device, the outlier rule, what to collect or stream."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def device_name(text: str) -> str:
    """`auto` is the first of cuda, mps, cpu this machine has; any other name is checked later by resolve_device."""
    if text.strip().lower() != "auto":
        return text
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def add_device_argument(p: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    shown = "the config's device" if default is None else default
    p.add_argument("--device", default=default, type=device_name,
                   help=f"cpu, cuda, cuda:N, mps or auto (the first of cuda, mps, cpu present; default {shown})")


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    """--no-progress, also spelled --quiet: every verb with a progress bar takes both."""
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars")


def add_overwrite_argument(p: argparse.ArgumentParser, what: str = "--out") -> None:
    """--overwrite: every verb that writes refuses a target holding another job's output unless given it."""
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace what {what} holds (only progsae outputs are ever replaced; without it another job's output is refused)")


def comma_list(text: str) -> list[str]:
    """`a, b,c` -> ["a", "b", "c"] (empty items dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _converted(text: str, convert: Callable[[str], T], what: str) -> list[T]:
    try:
        return [convert(t) for t in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got '{text}'") from None


def int_list(text: str) -> list[int]:
    return _converted(text, int, "integers")


def float_list(text: str) -> list[float]:
    return _converted(text, float, "numbers")


def add_outlier_arguments(p: argparse.ArgumentParser) -> None:
    """--outlier-factor / --keep-outliers: the massive-activation rows readers drop (progsae.data.outliers)."""
    from progsae.data.outliers import DEFAULT_OUTLIER_FACTOR

    p.add_argument("--outlier-factor", type=float, default=DEFAULT_OUTLIER_FACTOR,
                   help=f"drop rows whose norm exceeds this multiple of the median train-row norm (default {DEFAULT_OUTLIER_FACTOR:g})")
    p.add_argument("--keep-outliers", action="store_true", help="keep every row, massive-activation tokens included")


def open_store(args: argparse.Namespace, splits: tuple[str, ...] = ()):
    """The store at args.acts under the verb's outlier rule; prints what the rule drops from `splits`."""
    from progsae.data.store import ActivationStore
    from progsae.errors import ProgsaeError

    if not args.keep_outliers and not args.outlier_factor > 1:
        raise ProgsaeError(f"--outlier-factor must exceed 1 (rows above factor x the median norm are dropped), got {args.outlier_factor}")
    store = ActivationStore(args.acts, outlier_factor=None if args.keep_outliers else args.outlier_factor)
    report_outliers(store, splits)
    return store


def report_outliers(store, splits: tuple[str, ...]) -> None:
    """One line per split: how many rows the store's rule drops."""
    from progsae.data.outliers import describe

    for split in splits:
        if store.has_split(split):
            print("progsae: " + describe(store.outliers(split)))


def record_given_options(p: argparse.ArgumentParser) -> None:
    """Make `p` note which options the command line gave: call after its last add_argument, then
    `given_options(args)` in the verb (a --config file's values yield only to options actually typed)."""
    defaults = {}
    for action in p._actions:
        if action.dest != "help" and action.default is not argparse.SUPPRESS:
            defaults[action.dest] = action.default
            action.default = argparse.SUPPRESS  # absent from the namespace unless typed
    p.set_defaults(option_defaults=defaults)


def given_options(args: argparse.Namespace) -> set[str]:
    """The options typed on the command line (see record_given_options); the others get their defaults."""
    defaults = vars(args).pop("option_defaults", {})
    given = {dest for dest in defaults if hasattr(args, dest)}
    for dest, value in defaults.items():
        if not hasattr(args, dest):
            setattr(args, dest, value)
    return given


def add_wandb_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wandb", metavar="PROJECT", default=None,
                   help="also log the training metrics and feature densities to this Weights & Biases project "
                        "(needs pip install 'progsae[wandb]'; WANDB_MODE=offline writes the run under the SAE folder)")


def add_source_arguments(p: argparse.ArgumentParser, model_default: str | None) -> None:
    """Model, hook(s), corpus, held-out sizes, contexts and document split: what `collect` stores and a streamed `train` reads."""
    from progsae.data.collect import STORAGE_DTYPES, CollectConfig

    d = CollectConfig()
    shown = f"default {model_default}" if model_default else "streams from this model instead of reading --acts"
    p.add_argument("--model", default=model_default, help=f"model name, hub id or folder ({shown})")
    p.add_argument("--hook", default=d.hook, help=f"hook site, e.g. resid_post.14, or several (resid_post.6,resid_post.14: one forward, "
                   "one store or SAE per hook); TransformerLens (blocks.14.hook_resid_post), module-path (layers.14) "
                   f"and dictionary_learning (resid_post_layer_14) names are accepted (default {d.hook})")
    p.add_argument("--corpus", default=d.corpus, help=f"text source (default {d.corpus})")
    p.add_argument("--test-tokens", type=int, default=d.test_tokens, help=f"held-out activations to store (default {d.test_tokens})")
    p.add_argument("--validation-tokens", type=int, default=None,
                   help="activations of the validation split, which orderings and other data-driven choices read (default: as many as --test-tokens)")
    p.add_argument("--context-length", type=int, default=d.context_length, help=f"tokens per context (default {d.context_length})")
    p.add_argument("--storage-dtype", default=None, choices=STORAGE_DTYPES,
                   help=f"dtype the activations are stored in (default {d.storage_dtype}; float16 halves the disk use)")
    p.add_argument("--dtype", dest="old_dtype", default=None, choices=STORAGE_DTYPES, help=argparse.SUPPRESS)  # deprecated: --storage-dtype
    p.add_argument("--first-position", type=int, default=d.first_position,
                   help="first stored position of each context (default 1: leave out BOS / the first token)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="share of documents in the test split (default: tokens ratio, clipped to 0.02..0.4)")
    p.add_argument("--validation-fraction", type=float, default=None,
                   help="share of documents in the validation split (default: tokens ratio, clipped to 0.02..0.4)")
    p.add_argument("--text-field", default=d.text_field, help="text field of .jsonl files and datasets (default text)")
    p.add_argument("--dataset-config", default=None, help="Hugging Face dataset config name")
    p.add_argument("--dataset-split", default=d.dataset_split, help="Hugging Face dataset split (default train)")


def source_config(args: argparse.Namespace, *, tokens: int, batch_size: int, seed: int, device: str, **extra):
    """The CollectConfig of the arguments `add_source_arguments` defined (plus the verb's own names for the rest)."""
    import sys

    from progsae.data.collect import CollectConfig
    from progsae.errors import ProgsaeError

    storage_dtype = args.storage_dtype
    if args.old_dtype is not None:
        if storage_dtype is not None and storage_dtype != args.old_dtype:
            raise ProgsaeError(f"--dtype {args.old_dtype} and --storage-dtype {storage_dtype} disagree; give --storage-dtype only")
        print("progsae: --dtype is deprecated (in Hugging Face it is the model's dtype); it sets --storage-dtype", file=sys.stderr)
        storage_dtype = args.old_dtype
    return CollectConfig(
        model=args.model, hook=args.hook, corpus=args.corpus, tokens=tokens, test_tokens=args.test_tokens,
        context_length=args.context_length, batch_size=batch_size, storage_dtype=storage_dtype or CollectConfig().storage_dtype,
        first_position=args.first_position, seed=seed, test_fraction=args.test_fraction,
        validation_tokens=args.validation_tokens, validation_fraction=args.validation_fraction,
        device=device, text_field=args.text_field, dataset_config=args.dataset_config, dataset_split=args.dataset_split, **extra,
    )
