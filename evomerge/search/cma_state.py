"""pycma's ``CMAEvolutionStrategy`` state as JSON (no pickle), for checkpoints in the study.

What is kept: every array and number that pycma's ask/tell reads or adapts — the mean and its
history, the step size, the evolution paths (``pc``, ``adapt_sigma.ps``), the covariance and
its eigen-decomposition (``sm``: C, B, D …), the per-coordinate scaling (``sigma_vec``), the
counters and the best solution — plus numpy's global RNG state, from which pycma samples.
Objects are walked one level deep; a value that is not an array or a JSON scalar (a logger, a
callback) is rebuilt by the constructor from the same options. A checkpoint taken between
``tell`` and the next ``ask`` makes a fresh strategy ask exactly the points the old one would
have (tested), so a resume does not depend on replaying the study with the same floating point
arithmetic (another CPU or BLAS may round an eigendecomposition differently).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["es_state", "load_es_state", "skipped", "REBUILT", "STATE_VERSION"]

STATE_VERSION = 1
_PARTS = ("sm", "adapt_sigma", "sigma_vec", "best", "fit")  # adaptive sub-objects of es


def _encode(v: Any) -> Any:
    """A JSON value for a scalar, array or list of those; ``...`` for anything else."""
    if type(v) is np.ndarray and v.dtype.kind in "fiub":  # subclasses carry behaviour: skip
        return {"__ndarray__": v.tolist(), "dtype": v.dtype.str, "shape": list(v.shape)}
    if type(v) in (bool, int, float, str, type(None)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if type(v) is range:  # pycma's indices of selective mirrors (small populations)
        return {"__range__": [v.start, v.stop, v.step]}
    if type(v) in (list, tuple) and len(v) < 100_000:
        out = [_encode(x) for x in v]
        return ... if any(x is ... for x in out) else out
    if type(v) is dict and all(type(k) is str for k in v) and not {"__ndarray__", "__range__",
                                                                   "__dict__"} & set(v):
        items = {k: _encode(x) for k, x in v.items()}
        return ... if any(x is ... for x in items.values()) else {"__dict__": items}
    return ...


def _decode(v: Any) -> Any:
    if isinstance(v, dict) and "__ndarray__" in v:
        return np.asarray(v["__ndarray__"], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
    if isinstance(v, dict) and "__range__" in v:
        return range(*v["__range__"])
    if isinstance(v, dict) and "__dict__" in v:
        return {k: _decode(x) for k, x in v["__dict__"].items()}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


def _fields(obj: Any) -> dict[str, Any]:
    out = {}
    for k, v in vars(obj).items():
        enc = _encode(v)
        if enc is not ...:
            out[k] = enc
    return out


# What is not stored, and why that is safe: objects the constructor rebuilds from the same
# options (options, transforms, parameters, loggers, timers), the sub-objects stored as parts,
# lookup archives of solutions asked in earlier generations, and pycma's caches.
REBUILT = {
    "es": {"opts", "gp", "boundary_handler", "sp", "sp0", "adapt_sigma", "integer_centering",
           "sigma_vec", "sm", "sent_solutions", "_round_integer_variables", "archive",
           "_injected_solutions_archive", "best", "const", "logger", "_stopdict",
           "_stoptolxstagnation", "fit", "more_to_write", "timer"},
    "sm": {"randn", "eigenmethod"}, "adapt_sigma": {"_es_opts"},
    "sigma_vec": {"_parameters"}, "best": {"last"}, "fit": set(),
}


def skipped(es: Any) -> dict[str, set[str]]:
    """Attributes :func:`es_state` does not store, per object (tests check them against
    :data:`REBUILT`, so a pycma change that adds state is noticed)."""
    objs = {"es": es, **{p: getattr(es, p) for p in _PARTS if hasattr(es, p)}}
    return {name: {k for k, v in vars(o).items() if _encode(v) is ...}
            for name, o in objs.items()}


def es_state(es: Any) -> dict[str, Any]:
    """JSON-serialisable state of ``es`` and of numpy's global RNG."""
    import cma

    name, keys, pos, has_gauss, cached = np.random.get_state()
    parts = {p: _fields(getattr(es, p)) for p in _PARTS if hasattr(es, p)}
    return {"version": STATE_VERSION, "cma_version": cma.__version__,
            "es": _fields(es), "parts": parts,
            "rng": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def load_es_state(es: Any, state: dict[str, Any]) -> None:
    """Write ``state`` (from :func:`es_state`) into ``es``, a strategy built with the same
    options, and restore numpy's global RNG. Raises ValueError on a state this code or this
    pycma cannot read."""
    import cma

    if state.get("version") != STATE_VERSION or state.get("cma_version") != cma.__version__:
        raise ValueError(f"checkpoint of pycma {state.get('cma_version')} (state version "
                         f"{state.get('version')}); this is pycma {cma.__version__}")
    if len(state["es"]["mean"]["__ndarray__"]) != len(es.mean):
        raise ValueError("checkpoint of another dimension")
    for k, v in state["es"].items():
        setattr(es, k, _decode(v))
    for part, fields in state["parts"].items():
        obj = getattr(es, part)
        for k, v in fields.items():
            setattr(obj, k, _decode(v))
    if not hasattr(es, "timer"):  # made by the first ask(); later asks only tick it
        es.timer = cma.utilities.utils.ElapsedWCTime()
    name, keys, pos, has_gauss, cached = state["rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
