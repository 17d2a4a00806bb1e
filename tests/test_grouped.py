"""A candidate's task-vector tensors merged together (evomerge.engine.grouped): the same bits
as one tensor at a time, for every fused method, small tensors (thresholds selected many per
launch) and large ones (sampled brackets) mixed, eager and compiled, a missed bracket too; and
one host read of device data per candidate, where one tensor at a time reads once per large
tensor."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch
from merge_kernels import OpCounter
from test_fused import FUSABLE, _sources

import evomerge.engine.select as select
from evomerge.engine.fused import TensorEngine
from evomerge.engine.materialize import Materializer
from evomerge.engine.plan import TensorTask
from evomerge.engine.recipe import load_recipe
from evomerge.methods import METHODS

SHAPES = [(300,), (select.EXACT_BELOW * 2 + 5,), (40, 17), (300,), (select.EXACT_BELOW + 1,)]
DENSITIES = [(0.3, 0.7, 0.5), (1.0, 0.0, 0.05), (0.2, 0.55, 0.9), (0.001, 0.999, 1.0),
             (0.6, 0.6, 0.6)]


def tasks(method):
    sparsify, _ = method.composition
    out = []
    for k, (shape, dens) in enumerate(zip(SHAPES, DENSITIES)):
        per_model = {"weight": (0.7, -0.4, 1.1 - 0.1 * k)}
        if sparsify:
            per_model["density"] = dens
        if sparsify == "magnitude_outliers":
            per_model["gamma"] = (0.02, 0.0, 0.1)
        out.append(TensorTask(f"t{k}", tuple((f"e{i}", f"t{k}") for i in range(3)),
                              ("base", f"t{k}"), MappingProxyType({"normalize": True,
                                                                   "lambda": 1.3}),
                              MappingProxyType(per_model), None, shape))
    return out


def sources(dtype):
    src = {}
    for k, shape in enumerate(SHAPES):
        for name, t in _sources(shape, dtype, seed=10 + k, scale=0.02).items():
            src[(name, f"t{k}")] = t
    return src


class Plan:
    def __init__(self, method, ts, cd):
        self.method, self.tasks, self.compute_dtype = method, tuple(ts), cd


@pytest.fixture(scope="module")
def engines():
    return {"eager": TensorEngine(compile=False), "compiled": TensorEngine(compile=True)}


CASES = [(name, dtype, "eager") for name in FUSABLE for dtype in (torch.float32, torch.bfloat16)
         ] + [("ties", torch.float32, "compiled"), ("breadcrumbs_ties", torch.bfloat16, "compiled")]


@pytest.mark.parametrize("name,dtype,kind", CASES)
def test_together_equals_one_at_a_time(engines, name, dtype, kind):
    method = METHODS.get(name)
    src = sources(dtype)
    ts = tasks(method)
    fetch = lambda m, n: src[(m, n)]  # noqa: E731
    one = {t.out_name: torch.empty(t.shape, dtype=dtype) for t in ts}
    for t in ts:
        TensorEngine(compile=False).run(t, method, fetch, torch.float32, one[t.out_name])
    together = {t.out_name: torch.empty(t.shape, dtype=dtype) for t in ts}
    engines[kind].run_plan(Plan(method, ts, torch.float32), fetch, together)
    for t in ts:
        assert torch.isfinite(together[t.out_name]).all()
        assert torch.equal(one[t.out_name], together[t.out_name]), t.out_name


def test_a_missed_bracket_inside_a_group_is_selected_exactly(engines, monkeypatch):
    method = METHODS.get("ties")
    src = sources(torch.bfloat16)
    ts = tasks(method)
    fetch = lambda m, n: src[(m, n)]  # noqa: E731
    want = {t.out_name: torch.empty(t.shape, dtype=torch.bfloat16) for t in ts}
    engines["eager"].run_plan(Plan(method, ts, torch.float32), fetch, want)
    monkeypatch.setattr(select.MagnitudeSample, "bracket",
                        lambda self, r: (float(self.values[0]), float(self.values[1])))
    got = {t.out_name: torch.empty(t.shape, dtype=torch.bfloat16) for t in ts}
    TensorEngine(compile=False).run_plan(Plan(method, ts, torch.float32), fetch, got)
    for t in ts:
        assert torch.equal(want[t.out_name], got[t.out_name]), t.out_name


def test_one_host_read_per_candidate(half):
    """Steady TIES candidates on a bf16 model whose matrices take the sampled path: together,
    the device is read once; one tensor at a time, once per sampled tensor."""
    if half["dtype"] != "bfloat16":
        pytest.skip("one dtype is enough here (test_numerics covers both)")
    experts = [half["a"], half["b"], half["c"]]
    ties = "merge_method: ties\nbase_model: {}\ndtype: float32\nout_dtype: {}\nmodels:\n{}"

    def recipe(shift):
        models = "".join(f"  - {{model: {e}, parameters: {{weight: 0.5, density: "
                         f"{0.3 + 0.1 * i + shift}}}}}\n" for i, e in enumerate(experts))
        return load_recipe(ties.format(half["base"], half["dtype"], models))

    counts, first = {}, None
    for grouped in (True, False):
        mat = Materializer(experts, base_model=half["base"], grouped=grouped, compile=False)
        mat.materialize(recipe(0.0))  # first candidate: magnitude samples are drawn
        with OpCounter() as c:
            model = mat.materialize(recipe(0.05))
        counts[grouped] = c.syncs
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if first is not None:
            assert all(torch.equal(state[k], first[k]) for k in state)
        first = state
    sampled = sum(1 for n, p in model.named_parameters() if p.numel() >= select.EXACT_BELOW)
    assert counts == {True: 1, False: sampled} and sampled > 10
