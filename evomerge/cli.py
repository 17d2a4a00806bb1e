"""Command line: parses arguments and calls the library; nothing else lives here.

    evomerge merge RECIPE.yaml OUT_DIR [--device cpu|cuda] [--shard-size 2GB]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from evomerge.errors import EvomergeError

__all__ = ["main"]


def _size(text: str) -> int:
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    upper = text.strip().upper()
    for suffix, factor in units.items():
        if upper.endswith(suffix):
            return int(float(upper[: -len(suffix)]) * factor)
    return int(upper)


def _cmd_merge(args: argparse.Namespace) -> int:
    from evomerge.merge import merge_to_disk
    from evomerge.progress import progress_bar
    from evomerge.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    with progress_bar("merging tensors", enabled=not args.quiet) as update:
        plan = merge_to_disk(recipe, args.out, device=args.device,
                             max_shard_bytes=args.shard_size, progress=update)
    print(f"Wrote {args.out}: {len(plan.tasks)} tensors, {plan.num_layers} layers, "
          f"method {recipe.merge_method}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evomerge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="build a merged model from a recipe YAML")
    merge.add_argument("recipe", help="recipe YAML (mergekit-compatible)")
    merge.add_argument("out", help="output model directory (must not exist or be empty)")
    merge.add_argument("--device", default="cpu", help="where the math runs: cpu, cuda, cuda:N")
    merge.add_argument("--shard-size", type=_size, default=_size("2GB"),
                       help="largest safetensors shard, e.g. 500MB (default 2GB)")
    merge.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    merge.set_defaults(func=_cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``evomerge`` console script; exit code 2 for user errors."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EvomergeError as exc:
        print(f"evomerge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evomerge: interrupted; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
