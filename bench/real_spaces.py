"""The searched spaces of the real-model experiment (bench/real_model.py): one space document
per row, all on the validation split (answer NLL of the three tasks unless a row says
otherwise), each ``evals`` evaluations (equal evaluations; ``--minutes`` optionally caps wall
time too):

  ps      per-layer DARE-TIES, CMA-ES, 2 x evals: "ps" is its best after evals, "ps (2x)"
          after all of them (the budget PS+DFS spends in all); ``--ps-factor 3`` continues the
          study to 3 x evals, row "ps (3x)"
  psta    PS's search with task arithmetic in place of DARE-TIES (per-group weights only, no
          random drop: PS's best points drive DARE's density to ~1), 2 x evals; row "psta"
  psties  PS's search with TIES (normalize off) in place of DARE-TIES: the same genes, the
          random drop and its 1/density rescale replaced by keeping the largest-magnitude
          entries, sign election kept; 2 x evals; row "psties"
  psem    PS on validation answers (generation on): maximize ``both`` exact match with each
          skill kept to 80% of its expert's (bench/real_answers.py), 2 x evals; rows as swap's
  psemps  psem's CMA-ES started at PS's best of its first evals (optimizer x0, the gene
          values of that trial): the NLL for the first evals, answers for the evals after;
          ``--ps-first N`` as for psdfs; row "psemps"
  swap    layer swapping, CMA-ES
  dfs     data-flow paths, CMA-ES over thresholded per-slot flags (the old encoding)
  path    data-flow paths as segments (optimizer path_ga), from add's own path
  pathlocal  path with local mutations (reach 3, max_shift 1): re-source, insert, delete or
          duplicate at most 3 layers near their depth, from add's own path
  pathmix path from both experts' own paths, half the children depth-aligned crossovers,
          and only re-source, shift or scale mutations: splices of the two experts (three
          variants tried on add + final seed 2: results/bench/pathmix_variants/)
  pathsplice  pathmix whose generation 0 is the two own paths and six splices of them (one
          expert's path with a run of the other's layers at their own depth, path_ga
          init_splices 1), not mutants: the first generation already mixes the experts
  psdfs   path_ga over {ps, add, other}, ps = the PS study's best after evals, from its path
          (``--ps-first N``: from PS's best of its first N, for 2 x evals - N evaluations; its
          own study and row, e.g. "pslocal (48+16)" with ``--evals 32 --ps-first 48``)
  pslocal psdfs with local mutations (path_ga reach 1, max_shift 1): each touches one layer
  qd      map_elites over the PS space, descriptors = the two skills' answer NLL; rows: the
          archive's best on ``both`` and its most balanced member (max of the lower skill)
"""

from __future__ import annotations

from typing import Any

from real_skills import pair_tag

SPACES = ("ps", "psta", "psties", "psem", "psemps", "swap", "dfs", "path", "pathlocal", "pathmix",
          "pathsplice", "psdfs", "pslocal", "qd")
PS_STARTED = ("psdfs", "pslocal", "psemps")  # searches from the PS study's point
DFS_SIGMA0 = 0.2  # the DFS search's CMA-ES step as first run (README table)


def base_space(name: str, base: str, experts: dict[str, str], files: dict, sizes: dict,
               minutes: float | None, trials: int, seed: int) -> dict[str, Any]:
    val = {s: str(f["validation"]) for s, f in files.items()}
    test = {s: str(f["test"]) for s, f in files.items()}
    budget = {"trials": trials, **({"wall_time": minutes * 60} if minutes else {})}
    return {
        "name": name, "base_model": base, "models": experts,
        "evaluators": {"qa": {"type": "answers", "files": val, "chat_template": True,
                              "batch_size": 30, "max_new_tokens": 10,
                              "test": {"files": test, "generate": True, "limit": sizes["test"]}}},
        "objectives": [{"evaluator": "qa", "task": s, "metric": "answer_nll",
                        "direction": "minimize"} for s in files],
        "budget": budget,
        "optimizer": {"name": "cma", "popsize": 8, "seed": seed}, "device": "auto"}


def spaces(base: str, experts: dict[str, str], files: dict, sizes: dict, minutes: float | None,
           trials: int, seed: int, pair: str = "words", dfs_sigma0: float = DFS_SIGMA0,
           ps_first: int | None = None) -> dict[str, dict[str, Any]]:
    """The searched spaces (names as in the README table); ``psdfs`` and ``pslocal`` are
    completed by :func:`psdfs_space` once the PS study has run, ``psemps`` by its start (and,
    as ``psem``, by real_answers.psem_space). PS+DFS starts from PS's
    best of its first ``ps_first`` (default ``trials``) and runs 2 x ``trials`` - ``ps_first``,
    the budget of ``ps (2x)`` in all (another split is its own study, ``pslocal{ps_first}``)."""
    dfs_name = "dfs" if dfs_sigma0 == DFS_SIGMA0 else f"dfs_sigma{dfs_sigma0:g}"  # own study
    other = [s for s in experts if s != "add"][0]
    tag = f"{pair_tag(pair)}" + (f"_e{trials}" if minutes is None else "")

    def make(name: str, n: int = trials, **over: Any) -> dict[str, Any]:
        return {**base_space(f"real{tag}_{name}_s{seed}", base, experts, files, sizes, minutes,
                             n, seed), **over}
    ps = {"method": "dare_ties", "parameters": {"weight": [0.0, 1.5], "density": [0.1, 1.0]},
          "granularity": {"layers_per_group": 3, "embeddings": False}}
    paths = {"repeats": 3, "max_length": 40, "scaling": "slot", "start": "add"}
    ga = {"name": "path_ga", "popsize": 8, "parents": 4, "seed": seed}
    first = trials if ps_first is None else ps_first
    split = "" if first == trials else str(first)  # the first split's studies keep their names
    # splices of the two experts: both own paths, crossovers, length-keeping mutations
    mix = {**ga, "starts": ["add", other], "crossover": 0.5,
           "operators": ["resource", "shift", "scale"]}
    return {
        "ps": make("ps", 2 * trials, **ps),
        "psta": make("psta", 2 * trials, **{**ps, "method": "task_arithmetic",
                                            "parameters": {"weight": ps["parameters"]["weight"]}}),
        "psties": make("psties", 2 * trials, **{**ps, "method": "ties", "parameters": {
            **ps["parameters"], "normalize": False}}),  # DARE-TIES's sum, without its drop
        "psem": make("ps", 2 * trials, **ps),  # completed by real_answers.psem_space in run()
        "psemps": make(f"psemps{split}", 2 * trials - first, **ps),  # and from PS's best
        "swap": make("swap", layer_swap={"choices": ["base", *experts]},
                     granularity={"layers_per_group": 3}),
        "dfs": make(dfs_name, dfs={"repeats": 2, "max_length": 40, "scaling": "pair",
                                   "start": "add"},
                    optimizer={"name": "cma", "popsize": 8, "seed": seed,
                               "sigma0": dfs_sigma0}),
        "path": make("path", dfs=paths, optimizer=ga),
        "pathlocal": make("pathlocal", dfs=paths,
                          optimizer={**ga, "reach": 3, "max_shift": 1}),
        "pathmix": make("pathmix", dfs=paths, optimizer=mix),
        "pathsplice": make("pathsplice", dfs=paths, optimizer={**mix, "init_splices": 1.0}),
        "psdfs": make(f"psdfs{split}", 2 * trials - first, dfs={**paths, "start": "ps"},
                      optimizer=ga),
        "pslocal": make(f"pslocal{split}", 2 * trials - first, dfs={**paths, "start": "ps"},
                        optimizer={**ga, "reach": 1, "max_shift": 1}),
        "qd": make("qd", **ps, optimizer={"name": "map_elites", "popsize": 8, "bins": 6,
                                          "seed": seed,
                                          "descriptors": ["add/answer_nll",
                                                          f"{other}/answer_nll"]}),
    }


def psdfs_space(doc: dict[str, Any], ps_study: str, trial: int) -> dict[str, Any]:
    """PS+DFS over the PS study's point ``trial`` (its best among the first ``ps_first``)."""
    return {**doc, "models": {"ps": f"study:{ps_study}#trial={trial}", **doc["models"]}}
