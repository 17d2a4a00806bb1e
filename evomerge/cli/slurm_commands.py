"""``evomerge slurm ...``: argument parsing for the Slurm commands (the CLI stays thin: the
work is in evomerge.cluster.slurm)."""

from __future__ import annotations

import argparse

from evomerge.cli.run_args import track_arg

__all__ = ["add_slurm_commands"]


def _slurm_options(args: argparse.Namespace):
    from pydantic import ValidationError

    from evomerge.cluster.slurm import SlurmOptions
    from evomerge.engine.config_io import format_validation_error
    from evomerge.errors import ConfigError

    fields = {k: getattr(args, k) for k in SlurmOptions.model_fields if getattr(args, k, None)
              is not None}
    try:
        return SlurmOptions(**fields)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "slurm options")) from None


def _cmd_slurm_submit(args: argparse.Namespace) -> int:
    from evomerge.cluster.slurm import submit

    resume = args.command_slurm == "resume"
    job = submit(None if resume else args.target, _slurm_options(args),
                 study=args.target if resume else args.study, storage=args.storage,
                 results=args.results, trials=args.trials, track=args.track)
    print(f"Submitted Slurm job {job.job_id} for study {job.study!r}.\n"
          f"  script:  {job.script}\n  storage: {job.storage}\n"
          f"  watch:   evomerge slurm status {job.study} --results {args.results}")
    return 0


def _cmd_slurm_node_address(args: argparse.Namespace) -> int:
    from evomerge.cluster.slurm_info import node_address
    from evomerge.errors import ConfigError

    try:
        print(node_address(args.node))
    except LookupError as exc:
        raise ConfigError(f"{exc}; is this a Slurm node, and is scontrol on PATH?") from None
    return 0


def _cmd_slurm_status(args: argparse.Namespace) -> int:
    from evomerge.cli.tables import print_slurm_status
    from evomerge.cluster.slurm import slurm_status

    print_slurm_status(args.study, slurm_status(args.study, args.storage, args.results))
    return 0


def add_slurm_commands(sub, study_args) -> None:
    """The ``evomerge slurm`` subcommands on ``sub``; ``study_args`` adds STUDY/--storage/--results."""
    slurm = sub.add_parser("slurm", help="launch and watch searches on a Slurm cluster")
    ssub = slurm.add_subparsers(dest="command_slurm", required=True)
    for name, target, text in (("submit", "space", "submit a search (creates the study first)"),
                               ("resume", "study", "submit a job that resumes a study")):
        p = ssub.add_parser(name, help=text)
        p.add_argument("target", metavar=target.upper(), help=f"{target} to run")
        if name == "submit":
            p.add_argument("--study", default=None, help="study name (default: the space's name)")
        p.add_argument("--storage", default=None,
                       help="Optuna storage URL (default journal file results/STUDY/journal.log)")
        p.add_argument("--results", default="results", help="results root (default ./results)")
        p.add_argument("--trials", type=int, default=None, help="evaluation budget (total)")
        p.add_argument("--nodes", type=int, default=None)
        p.add_argument("--gpus-per-node", type=int, default=None)
        p.add_argument("--cpus-per-node", type=int, default=None)
        p.add_argument("--time", default=None, help="time limit, e.g. 04:00:00")
        p.add_argument("--partition", default=None)
        p.add_argument("--workers", type=int, default=None,
                       help="Ray actors (default: one per GPU, or one per node on CPU)")
        p.add_argument("--num-gpus", type=float, default=None, help="GPUs per actor")
        p.add_argument("--num-cpus", type=float, default=None, help="CPUs per actor")
        p.add_argument("--signal-seconds", type=int, default=None,
                       help="stop and requeue this many seconds before the limit (default 120)")
        p.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=None,
                       help="extra sbatch option, e.g. --sbatch-arg=--account=proj (repeatable)")
        p.add_argument("--head-address", default=None,
                       help="Ray head address (default: Slurm's NodeAddr of the first node)")
        track_arg(p)
        p.set_defaults(func=_cmd_slurm_submit)
    na = ssub.add_parser("node-address", help="the address Slurm uses for a node (job scripts)")
    na.add_argument("node", help="node name, e.g. $SLURMD_NODENAME")
    na.set_defaults(func=_cmd_slurm_node_address)
    st = ssub.add_parser("status", help="the study's Slurm jobs and its progress")
    study_args(st)
    st.set_defaults(func=_cmd_slurm_status)
