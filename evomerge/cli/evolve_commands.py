"""``evomerge import-evolve CONFIG``: a mergekit-evolve config and its command-line flags as an
evomerge search space (the work is in :mod:`evomerge.search.evolve_import`).

Every mergekit-evolve flag parses here under its own name, so a user's command line carries
over by changing the program name and adding ``-o space.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_import_command"]

_BOOL_PAIRS = ("vllm", "in-memory", "merge-cuda", "trust-remote-code", "allow-crimes", "wandb",
               "save-final-model", "reshard")


def _cmd_import_evolve(args: argparse.Namespace) -> int:
    import yaml
    from pydantic import ValidationError

    from evomerge.engine.config_io import format_validation_error
    from evomerge.errors import ConfigError
    from evomerge.search.evolve_import import EvolveFlags, import_evolve

    given = {k: getattr(args, k) for k in EvolveFlags.model_fields
             if getattr(args, k, None) not in (None, [])}
    try:
        flags = EvolveFlags(**given)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "mergekit-evolve flags")) from None
    out = Path(args.output)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; choose another -o or add --force to replace it.")
    imported = import_evolve(args.config, flags, name=args.name)
    header = (f"# Imported from {args.config} by `evomerge import-evolve` (a mergekit-evolve "
              f"config): {imported.genes} genes, as mergekit-evolve's genome for these "
              f"{imported.num_layers}-layer models.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(imported.doc, sort_keys=False))
    print(f"Wrote {out}: study {imported.space.name!r}, {imported.genes} genes, budget "
          f"{flags.max_fevals} evaluations.")
    for note in imported.notes:
        print(f"  note: {note}")
    print("Run it:  evomerge search " + " ".join([str(out), *imported.search_args]))
    return 0


def add_import_command(sub) -> None:
    """Add ``import-evolve`` (mergekit-evolve's flags, its defaults) to subparsers ``sub``."""
    p = sub.add_parser("import-evolve",
                       help="convert a mergekit-evolve config (and its flags) to a search space")
    p.add_argument("config", help="mergekit-evolve YAML (genome, tasks, ...)")
    p.add_argument("-o", "--output", required=True, help="search space YAML to write")
    p.add_argument("--name", default=None, help="study name (default: the config's file name)")
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    p.add_argument("--max-fevals", type=int, default=None, help="evaluation budget (100)")
    p.add_argument("--sigma0", type=float, default=None, help="CMA-ES initial step (1/6)")
    p.add_argument("--random-seed", type=int, default=None, help="seed (0)")
    p.add_argument("--batch-size", type=int, default=None, help="lm-eval batch size")
    p.add_argument("--storage-path", default=None, help="results directory of the search")
    p.add_argument("--timeout", type=float, default=None, help="wall time of the search (s)")
    p.add_argument("--force-population-size", type=int, default=None, help="CMA-ES popsize")
    p.add_argument("--task-search-path", action="append", default=None,
                   help="directory of local lm-eval task YAMLs (repeatable)")
    p.add_argument("--num-gpus", type=int, default=None, help="workers, one GPU each")
    p.add_argument("-s", "--strategy", choices=["pool", "buffered", "serial"], default=None)
    p.add_argument("--i-understand-the-depths-of-the-evils-i-am-unleashing",
                   dest="allow_benchmark_tasks", action="store_true", default=None,
                   help="accepted (benchmark tasks are a warning in evomerge)")
    for name in _BOOL_PAIRS:
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                       dest=name.replace("-", "_"))
    p.add_argument("--wandb-project", default=None)
    p.add_argument("--wandb-entity", default=None)
    p.add_argument("--load-in-8bit", action="store_true", default=None)
    p.add_argument("--load-in-4bit", action="store_true", default=None)
    p.set_defaults(func=_cmd_import_evolve)
