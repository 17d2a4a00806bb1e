"""Command line: parses arguments and calls the library; nothing else lives here.

    evomerge merge RECIPE.yaml OUT_DIR [--device cpu|cuda] [--shard-size 2GB]
    evomerge zoo build [DIR] [--seed 0] [--profile full|mini]
    evomerge eval MODEL_OR_RECIPE --tasks add_l1,add_l2 [--evaluator zoo|lm_eval] [--split test]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from evomerge.progress import stage_bar
    from evomerge.zoo.build import build_zoo

    with stage_bar(enabled=not args.quiet) as update:
        manifest = build_zoo(args.dir, seed=args.seed, profile=args.profile, progress=update)
    print(f"Zoo ready in {args.dir}: models {', '.join(manifest['models'])}; tasks "
          f"{', '.join(manifest['tasks'])} (built in {manifest['build_seconds']} s).")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from evomerge.evaluators import make_evaluator
    from evomerge.scoring import load_model, score
    from evomerge.zoo.build import write_lm_eval_yamls

    tasks = [t for t in args.tasks.split(",") if t]
    if args.evaluator == "zoo":
        ev = make_evaluator("zoo", tasks=tasks, zoo=args.zoo, split=args.split, limit=args.limit)
    else:
        include = str(write_lm_eval_yamls(Path(args.zoo))) if args.zoo else None
        ev = make_evaluator("lm_eval", tasks=tasks, include_path=include, limit=args.limit,
                            batch_size=args.batch_size)
    model, tokenizer = load_model(args.target, device=args.device)
    scores = score(model, tokenizer, [ev])
    from evomerge.report import print_scores
    print_scores(str(args.target), scores, ev)
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

    zoo = sub.add_parser("zoo", help="the embedded model zoo").add_subparsers(
        dest="zoo_command", required=True)
    build = zoo.add_parser("build", help="build (or reuse) the zoo: base, experts, tasks")
    build.add_argument("dir", nargs="?", default="zoo", help="zoo directory (default ./zoo)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--profile", default="full", help="full (default) or mini (tests)")
    build.add_argument("-q", "--quiet", action="store_true")
    build.set_defaults(func=_cmd_zoo_build)

    ev = sub.add_parser("eval", help="score a model directory or a recipe")
    ev.add_argument("target", help="model directory or recipe YAML")
    ev.add_argument("--tasks", required=True, help="comma-separated task names")
    ev.add_argument("--evaluator", choices=["zoo", "lm_eval"], default="zoo")
    ev.add_argument("--zoo", default="zoo", help="zoo directory for zoo tasks (default ./zoo)")
    ev.add_argument("--split", default="test", choices=["validation", "test"])
    ev.add_argument("--limit", type=int, default=None, help="first N examples per task")
    ev.add_argument("--batch-size", type=int, default=32, help="lm-eval batch size")
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(func=_cmd_eval)
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
