"""Command line: parses arguments and calls the library; nothing else lives here.

    evomerge merge RECIPE.yaml OUT_DIR [--device cpu|cuda] [--shard-size 2GB] [--adapter]
    evomerge zoo build [DIR] [--seed 0] [--profile full|mini]
    evomerge eval MODEL_OR_RECIPE --tasks add_l1,add_l2 [--evaluator zoo|lm_eval] [--split test]
    evomerge search SPACE.yaml [--study NAME] [--storage URL] [--trials N] [--workers N]
    evomerge resume STUDY | status STUDY | front STUDY | report STUDY
    evomerge export STUDY (--best | --trial N | --pareto I | --archive CELL) [-o recipe.yaml]
        [--model-dir DIR]
    evomerge quickstart          # the whole job on the embedded zoo
    evomerge import-evolve EVOLVE.yml -o SPACE.yaml [mergekit-evolve's flags]
    evomerge slurm submit SPACE.yaml [--nodes N --gpus-per-node G --time T --partition P]
    evomerge slurm resume STUDY | slurm status STUDY
    evomerge dashboard [--storage URL] [--host 127.0.0.1 --port 8080]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from evomerge.cli.evolve_commands import add_import_command
from evomerge.cli.run_args import amount, track_arg, whole
from evomerge.cli.slurm_commands import add_slurm_commands
from evomerge.errors import ConfigError, EvomergeError

__all__ = ["main"]


def _size(text: str) -> int:
    """A byte size such as 500MB or 2GB: at least 1 byte, finite."""
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    upper = text.strip().upper()
    number, factor = upper, 1
    for suffix, f in units.items():
        if upper.endswith(suffix):
            number, factor = upper[: -len(suffix)], f
            break
    try:
        value = float(number) * factor
        size = int(value)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 500MB or 2GB") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 byte")
    return size


def _card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-model-id", action="append", default=None, metavar="HUB_ID",
                   help="Hub id for the model card's base_model (repeat it; default: the "
                        "sources named by Hub id)")


def _cmd_merge(args: argparse.Namespace) -> int:
    from evomerge.cli.progress import progress_bar
    from evomerge.engine.merge import merge_stages

    if args.adapter:
        from evomerge.engine.adapter_export import merge_to_adapter
        from evomerge.engine.recipe import load_recipe

        config = merge_to_adapter(load_recipe(args.recipe), args.out, device=args.device)
        print(f"Wrote {args.out}: a LoRA adapter of rank {config['r']} over "
              f"{config['base_model_name_or_path']} ({len(config['target_modules'])} modules); "
              f"PEFT loads it: PeftModel.from_pretrained(base_model, {str(args.out)!r}).")
        return 0

    with progress_bar("merging tensors", enabled=not args.quiet) as update:
        plans = merge_stages(args.recipe, args.out, args.stages, device=args.device,
                             max_shard_bytes=args.shard_size, progress=update,
                             warn=lambda s: print(f"evomerge: warning: {s}", file=sys.stderr),
                             base_model_ids=args.base_model_id)
    for plan in plans[:-1]:
        print(f"Built stage {plan.recipe.merge_method}: {plan.num_layers} layers.")
    plan = plans[-1]
    print(f"Wrote {args.out}: {len(plan.tasks)} tensors, {plan.num_layers} layers, "
          f"method {plan.recipe.merge_method}.")
    return 0


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from evomerge.cli.progress import stage_bar
    from evomerge.zoo.build import build_zoo

    with stage_bar(enabled=not args.quiet) as update:
        manifest = build_zoo(args.dir, seed=args.seed, profile=args.profile, progress=update)
    print(f"Zoo ready in {args.dir}: models {', '.join(manifest['models'])}; tasks "
          f"{', '.join(manifest['tasks'])} (built in {manifest['build_seconds']} s).")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from evomerge.cli.tables import print_scores
    from evomerge.commands import eval_evaluator
    from evomerge.scoring import load_model, nested_scores, score

    tasks = [t for t in args.tasks.split(",") if t]
    ev = eval_evaluator(args.evaluator, tasks, zoo=args.zoo, include=args.include,
                        split=args.split, limit=args.limit, batch_size=args.batch_size)
    model, tokenizer = load_model(args.target, device=args.device)
    scores = score(model, tokenizer, [ev])
    print_scores(str(args.target), scores, ev)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(nested_scores(scores), indent=2) + "\n")
    return 0


def _search_progress(quiet: bool):
    from evomerge.cli.progress import search_bar

    return search_bar(enabled=not quiet)


def _finish(outcome) -> int:
    from evomerge.cli.tables import print_outcome

    print_outcome(outcome)
    return 130 if outcome.stopped == "interrupted" else 0


def _cmd_search(args: argparse.Namespace) -> int:
    from evomerge.commands import search

    with _search_progress(args.quiet) as update:
        outcome = search(args.space, study=args.study, storage=args.storage, trials=args.trials,
                         workers=args.workers, results=args.results, progress=update,
                         offload=args.offload, track=args.track, overlap=args.overlap,
                         **_ray_options(args))
    return _finish(outcome)


def _cmd_resume(args: argparse.Namespace) -> int:
    from evomerge.commands import resume

    with _search_progress(args.quiet) as update:
        outcome = resume(args.study, storage=args.storage, trials=args.trials,
                         workers=args.workers, results=args.results, progress=update,
                         offload=args.offload, track=args.track, overlap=args.overlap,
                         **_ray_options(args))
    return _finish(outcome)


def _ray_options(args: argparse.Namespace) -> dict:
    opts = {}
    for key in ("ray_address", "num_gpus", "num_cpus", "timeout", "max_retries"):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    return opts


def _cmd_status(args: argparse.Namespace) -> int:
    from evomerge.cli.tables import print_status
    from evomerge.commands import status

    print_status(args.study, status(args.study, args.storage, args.results))
    return 0


def _cmd_front(args: argparse.Namespace) -> int:
    from evomerge.cli.tables import print_front
    from evomerge.commands import open_study
    from evomerge.search.front import front_trials

    study, space = open_study(args.study, args.storage, args.results)
    print_front(args.study, front_trials(study, space), space)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from evomerge.commands import open_study
    from evomerge.search.export import export_model, export_recipe
    from evomerge.search.ledger import results_dir

    if args.output is None and args.model_dir is None:
        raise ConfigError("Give -o RECIPE.yaml, --model-dir DIR, or both.")
    study, space = open_study(args.study, args.storage, args.results)
    choice = {"best": args.best, "trial": args.trial, "pareto": args.pareto,
              "archive": args.archive}
    if args.model_dir is not None:
        out = export_model(study, space, args.model_dir, args.output,
                           results_dir(args.study, args.results), args.base_model_id,
                           args.device, overwrite=args.force, **choice)
        print(f"Wrote {out} (model card: {out / 'README.md'}). Upload it with: "
              f"hf upload ORG/NAME {out}   (huggingface-cli upload before huggingface_hub 1.0)")
        return 0
    out = export_recipe(study, space, args.output, overwrite=args.force, **choice)
    print(f"Wrote {out}. Build it with: evomerge merge {out} OUT_DIR")
    if any("+" in ref for ref in space.models.values()):
        print(f"Over LoRA adapters, one adapter instead: evomerge merge {out} OUT_DIR --adapter")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from evomerge.cli.progress import stage_bar
    from evomerge.commands import open_study
    from evomerge.search.heldout import make_report
    from evomerge.search.ledger import results_dir

    study, space = open_study(args.study, args.storage, args.results)
    out = results_dir(args.study, args.results)
    with stage_bar(enabled=not args.quiet, verb="scoring") as update:
        doc = make_report(study, space, out, levels=args.levels, progress=update)
    print((out / "report.md").read_text())
    return 0 if doc else 1


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from evomerge.cli.quickstart import quickstart

    return quickstart(zoo=args.zoo, space=args.space, results=args.results, quiet=args.quiet,
                      trials=args.trials, seed=args.seed)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from evomerge.dashboard.server import serve

    serve(storages=args.storage or [], results=args.results, host=args.host, port=args.port,
          token=args.token)
    return 0


def _add_dashboard_command(sub) -> None:
    d = sub.add_parser("dashboard", help="web page: studies, fronts, trials; resume and export")
    d.add_argument("--storage", action="append", default=None,
                   help="Optuna storage URL (repeatable; default: every study under --results)")
    d.add_argument("--results", default="results", help="results root (default ./results)")
    d.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    d.add_argument("--port", type=whole(1, 65535), default=8080)
    d.add_argument("--token", default=None,
                   help="access token required on every request (default $EVOMERGE_DASHBOARD_"
                        "TOKEN; generated and printed when --host is not loopback)")
    d.set_defaults(func=_cmd_dashboard)


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: results/STUDY/study.db or, for a "
                        "Slurm study, results/STUDY/journal.log; journal:///path/file.log "
                        "for NFS)")
    p.add_argument("--results", default="results", help="results root (default ./results)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=None, help="evaluation budget (total)")
    p.add_argument("--workers", type=whole(0), default=0,
                   help="Ray actors evaluating in parallel; 0 = in this process (default)")
    p.add_argument("--ray-address", default=None, help="join a Ray cluster: auto or HOST:PORT")
    p.add_argument("--num-gpus", type=amount(), default=None,
                   help="GPUs per actor (fractional ok)")
    p.add_argument("--num-cpus", type=amount(), default=None, help="CPUs per actor")
    p.add_argument("--timeout", type=amount(positive=True), default=None,
                   help="seconds per candidate")
    p.add_argument("--max-retries", type=whole(0), default=None,
                   help="re-dispatches of a candidate whose actor died")
    p.add_argument("--offload", action="store_true",
                   help="keep source models in host memory, stream them to the device per "
                        "tensor (device memory ~ one model)")
    track_arg(p)
    p.add_argument("--overlap", action="store_true",
                   help="merge the next candidate while one is scored (in this process; one "
                        "more model copy in memory)")
    p.add_argument("-q", "--quiet", action="store_true")


def _add_study_commands(sub) -> None:
    s = sub.add_parser("search", help="run a search over a search-space YAML")
    s.add_argument("space", help="search space YAML (see search_spaces/)")
    s.add_argument("--study", default=None, help="study name (default: the space's name)")
    s.add_argument("--storage", default=None, help="Optuna storage URL")
    s.add_argument("--results", default="results", help="results root (default ./results)")
    _run_args(s)
    s.set_defaults(func=_cmd_search)
    r = sub.add_parser("resume", help="continue a stopped or killed study")
    _study_args(r)
    _run_args(r)
    r.set_defaults(func=_cmd_resume)
    for name, func, text in (("status", _cmd_status, "trials done/failed/running, best so far"),
                             ("front", _cmd_front, "print the Pareto front")):
        p = sub.add_parser(name, help=text)
        _study_args(p)
        p.set_defaults(func=func)
    e = sub.add_parser("export", help="write a trial's recipe (mergekit-compatible YAML)")
    _study_args(e)
    e.add_argument("--best", action="store_true", help="lowest weighted loss")
    e.add_argument("--trial", type=int, default=None, help="trial number")
    e.add_argument("--pareto", type=int, default=None, help="index on the Pareto front")
    e.add_argument("--archive", default=None, metavar="CELL",
                   help="a map_elites archive cell, e.g. 3,5 (its elite)")
    e.add_argument("-o", "--output", default=None, help="recipe YAML to write")
    e.add_argument("--force", action="store_true", help="replace the output file if it exists")
    e.add_argument("--model-dir", default=None,
                   help="also build the model here, with a Hub model card (study, trial, "
                        "objective values, front plot)")
    e.add_argument("--device", default="cpu", help="where --model-dir's merge runs")
    _card_args(e)
    e.set_defaults(func=_cmd_export)
    rep = sub.add_parser("report", help="re-score front, sources and uniform recipes on test")
    _study_args(rep)
    rep.add_argument("--levels", type=int, default=3, help="uniform grid values per parameter")
    rep.add_argument("-q", "--quiet", action="store_true")
    rep.set_defaults(func=_cmd_report)
    q = sub.add_parser("quickstart", help="build the zoo, search, report and export")
    q.add_argument("--zoo", default="zoo", help="zoo directory (built on first use)")
    q.add_argument("--space", default="search_spaces/zoo_mixed.yaml")
    q.add_argument("--results", default="results")
    q.add_argument("--trials", type=int, default=None, help="override the space's budget")
    q.add_argument("--seed", type=int, default=0, help="zoo seed (default 0)")
    q.add_argument("-q", "--quiet", action="store_true")
    q.set_defaults(func=_cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evomerge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="build a merged model from a recipe YAML")
    merge.add_argument("recipe", help="recipe YAML (mergekit-compatible)")
    merge.add_argument("out", help="output model directory (must not exist or be empty)")
    merge.add_argument("--device", default="cpu", help="where the math runs: cpu, cuda, cuda:N")
    merge.add_argument("--shard-size", type=_size, default=_size("2GB"),
                       help="largest safetensors shard, e.g. 500MB (default 2GB)")
    merge.add_argument("--stages", default=None,
                       help="where the named stages of a multi-document recipe are built "
                            "(default OUT-stages)")
    merge.add_argument("--adapter", action="store_true",
                       help="write a merge of LoRA adapters (lorahub, task_arithmetic) as one "
                            "PEFT adapter instead of a full model")
    merge.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _card_args(merge)
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
    ev.add_argument("--zoo", default=None,
                    help="zoo directory for zoo tasks (default ./zoo when a task is a zoo one)")
    ev.add_argument("--include", default=None,
                    help="directory of local lm-eval task YAMLs (lm-eval's own tasks stay on)")
    ev.add_argument("--json", default=None, metavar="FILE",
                    help="also write {task: {metric: value}} to FILE")
    ev.add_argument("--split", default="test", choices=["validation", "test"])
    ev.add_argument("--limit", type=int, default=None, help="first N examples per task")
    ev.add_argument("--batch-size", type=int, default=32, help="lm-eval batch size")
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(func=_cmd_eval)
    _add_study_commands(sub)
    add_import_command(sub)
    add_slurm_commands(sub, _study_args)
    _add_dashboard_command(sub)
    _verbose_everywhere(parser)
    return parser


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """``-v`` before or after the command: other libraries' warnings, logs and progress bars
    are shown (by default only evomerge's own output is)."""
    verbose = "show other libraries' warnings, logs and progress bars"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose)
    todo = [parser]
    while todo:
        for action in todo.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for p in action.choices.values():
                    p.add_argument("-v", "--verbose", action="store_true",
                                   default=argparse.SUPPRESS, help=verbose)
                    todo.append(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``evomerge`` console script; exit code 2 for user errors."""
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        from evomerge.cli.quiet import quiet_third_party

        quiet_third_party()
    from evomerge.cli.signals import Terminated, terminate_like_interrupt

    try:
        with terminate_like_interrupt():
            return args.func(args)
    except EvomergeError as exc:
        if getattr(args, "verbose", False) and exc.__cause__ is not None:
            import traceback  # -v: what an error raised from another one came from

            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"evomerge: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"evomerge: stopped by {exc}; nothing was written.", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("evomerge: interrupted; nothing was written.", file=sys.stderr)
        return 130
    finally:
        ledger = sys.modules.get("evomerge.search.ledger")  # not loaded: nothing was opened
        if ledger is not None:
            ledger.close_storages()


if __name__ == "__main__":
    sys.exit(main())
