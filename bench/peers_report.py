"""Figures of bench/peers.py: per program and setting, wall time per evaluation (median and
spread), evaluations per hour, peak memory, idle time between generations, held-out score
after N evaluations and after T seconds, and the two goals of issue #30:

* throughput: evomerge's evaluations per hour >= 3x mergekit-evolve's (whole runs, startup
  included);
* sample efficiency: evomerge reaches mergekit-evolve's final held-out score with <= 1/3 of
  its evaluations (per seed: the first generation boundary of evomerge's curve at or above
  mergekit-evolve's final held-out score).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

__all__ = ["program_facts", "summarize", "markdown", "plot"]

PROGRAMS = ("mergekit-evolve", "evomerge")


def _gen_bounds(run: dict[str, Any]) -> list[int]:
    return [g["evaluations"] for g in run["generations"]]


def _idle_between(run: dict[str, Any]) -> list[float]:
    """Gaps between the last evaluation of a generation and the first of the next."""
    ev, out = run["evals"], []
    for k in _gen_bounds(run)[:-1]:
        if 0 < k < len(ev):
            out.append(max(0.0, ev[k][0] - ev[k - 1][1]))
    return out


def _at_time(curve: list[dict[str, Any]], t: float) -> float | None:
    known = [c for c in curve if c["time"] is not None and c["time"] <= t]
    return known[-1]["heldout_score"] if known else None


def program_facts(run: dict[str, Any], t_cut: float | None) -> dict[str, Any]:
    """One program's run: timings, memory, held-out after N evaluations and after ``t_cut``."""
    durations = [e - s for s, e in run["evals"]]
    n = len(durations)
    span = run["evals"][-1][1] - run["evals"][0][0] if n else 0.0
    idle = _idle_between(run)
    curve = run.get("curve") or []
    return {
        "evaluations": n, "failed": run.get("failed_evals", 0), "rc": run["rc"],
        "seconds_total": round(run["total_s"], 1),
        "eval_s_median": round(statistics.median(durations), 3) if n else None,
        "eval_s_p10_p90": ([round(x, 3) for x in _quantiles(durations, (0.1, 0.9))]
                           if n else None),
        "evals_per_hour": round(n / run["total_s"] * 3600, 1) if n else 0.0,
        "evals_per_hour_steady": round(n / span * 3600, 1) if span else 0.0,
        "peak_memory_mb": round(run["peak_mb"]),
        "idle_between_generations_s": round(sum(idle), 2),
        "idle_per_generation_boundary_s": round(statistics.mean(idle), 3) if idle else 0.0,
        "busy_fraction": round(sum(durations) / span, 3) if span else None,
        "heldout_after_N": curve[-1]["heldout_score"] if curve else None,
        "heldout_after_T": _at_time(curve, t_cut) if t_cut is not None else None,
        "curve": [(c["evaluations"], c["time"], c["heldout_score"]) for c in curve],
    }


def _quantiles(xs: list[float], qs: tuple[float, ...]) -> list[float]:
    s = sorted(xs)
    return [s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] for q in qs]


def _reach(evo_curve: list[dict[str, Any]], target: float) -> int | None:
    for c in evo_curve:
        if c["heldout_score"] >= target - 1e-12:
            return c["evaluations"]
    return None


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Per setting: per seed and program the facts; over seeds the goal figures."""
    out = {}
    for name, setting in doc["settings"].items():
        seeds, ratios, reach = {}, [], []
        for seed, run in setting["runs"].items():
            evo, mk = run["evomerge"], run["mergekit-evolve"]
            t_cut = evo["total_s"]
            seeds[seed] = {p: program_facts(r, t_cut) for p, r in
                           (("mergekit-evolve", mk), ("evomerge", evo)) if r is not None}
            if mk is not None and seeds[seed]["mergekit-evolve"]["evals_per_hour"]:
                f = seeds[seed]
                ratios.append(f["evomerge"]["evals_per_hour"] / f["mergekit-evolve"]["evals_per_hour"])
                target, n = f["mergekit-evolve"]["heldout_after_N"], f["mergekit-evolve"]["evaluations"]
                k = _reach(evo.get("curve") or [], target) if target is not None else None
                reach.append({"seed": seed, "mergekit_final_heldout": target, "mergekit_evals": n,
                              "evomerge_evals_to_reach": k,
                              "fraction": round(k / n, 3) if k is not None and n else None})
        fractions = [r["fraction"] for r in reach]
        out[name] = {"seeds": seeds, "throughput_ratio": [round(r, 2) for r in ratios],
                     "reach": reach,
                     "goal_throughput_met": (min(ratios) >= 3) if ratios else None,
                     "goal_reach_met": all(f is not None and f <= 1 / 3 for f in fractions)
                     if reach else None}
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = []
    for name, s in doc["summary"].items():
        setting = doc["settings"][name]
        lines += [f"### {name}", "", f"mergekit-evolve: {setting['mergekit_evolve']}", "",
                  "| seed | program | evals | s/eval median [p10, p90] | evals/h (steady) | "
                  "peak MB | idle between gens (s) | held-out after N | after T |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for seed, progs in s["seeds"].items():
            for p, f in progs.items():
                spread = f["eval_s_p10_p90"] or ["-", "-"]
                lines.append(f"| {seed} | {p} | {f['evaluations']} | {f['eval_s_median']} "
                             f"[{spread[0]}, {spread[1]}] | {f['evals_per_hour']} "
                             f"({f['evals_per_hour_steady']}) | {f['peak_memory_mb']} | "
                             f"{f['idle_between_generations_s']} | {_fmt(f['heldout_after_N'])} "
                             f"| {_fmt(f['heldout_after_T'])} |")
        if s["throughput_ratio"]:
            reach = [(r["evomerge_evals_to_reach"], r["mergekit_evals"]) for r in s["reach"]]
            lines += ["", f"throughput ratio (evomerge / mergekit-evolve): "
                      f"{s['throughput_ratio']} -> goal >= 3x "
                      f"{'met' if s['goal_throughput_met'] else 'missed'}",
                      f"evaluations evomerge needs to reach mergekit-evolve's final held-out "
                      f"score (of its N): {reach} -> goal <= 1/3 "
                      f"{'met' if s['goal_reach_met'] else 'missed'}", ""]
        else:
            lines += ["", "goals: not measured (mergekit-evolve did not run)", ""]
        if "kill_test" in setting:
            lines += [f"killed and continued: {setting['kill_test']}", ""]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def plot(doc: dict[str, Any], path: Path) -> None:
    """Held-out score of the best-so-far candidate vs evaluations and vs seconds, one row per
    setting, one line per program and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["summary"])
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.6 * len(names)), squeeze=False)
    colours = {"mergekit-evolve": "#d62728", "evomerge": "#1f77b4"}
    for row, name in enumerate(names):
        for seed, progs in doc["summary"][name]["seeds"].items():
            for p, f in progs.items():
                pts = [c for c in f["curve"] if c[1] is not None]
                label = f"{p} {seed}"
                axes[row][0].step([c[0] for c in pts], [c[2] for c in pts], where="post",
                                  color=colours[p], alpha=0.8, label=label)
                axes[row][1].step([c[1] for c in pts], [c[2] for c in pts], where="post",
                                  color=colours[p], alpha=0.8, label=label)
        for col, xlabel in enumerate(("evaluations", "seconds since start")):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel("held-out score of best so far")
            ax.set_title(f"{name}: held-out vs {xlabel.split()[0]}")
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
