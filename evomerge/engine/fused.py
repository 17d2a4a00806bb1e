"""Per-tensor merge engine shared by the streaming merge and the resident materializer.

Both paths hand output tensors to one :class:`TensorEngine`, so a recipe evaluated in memory
during the search and the same recipe built by ``evomerge merge`` run the same arithmetic:
inputs are cast to the recipe's ``dtype`` (the compute dtype, mergekit's meaning), merged, and
cast once to the output dtype when written.

Task arithmetic, TIES and breadcrumbs run through one fused element-wise kernel
(:mod:`evomerge.engine.kernels`), compiled with ``torch.compile`` where the engine is told to
compile. Their trim thresholds are exact order statistics of |d_i|
(:mod:`evomerge.engine.select`); entries equal to a threshold are kept. The materializer hands
over a whole candidate at once (:meth:`TensorEngine.run_plan`): its thresholds come from
sampled brackets, small tensors' are selected many per launch, and the device is waited for
once per candidate, not once per tensor (:mod:`evomerge.engine.grouped`); ``evomerge merge``
streams tensor by tensor through the same code. An adapted source's tensors
(:class:`~evomerge.engine.lowrank.LowRank`) are merged from their factors where the method
allows, by row blocks otherwise (:mod:`evomerge.engine.lowrank`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from evomerge.engine.grouped import TaskVectorBatch
from evomerge.engine.kernels import (
    FusedKernel,
    compiles_exactly,
    linear_kernel,
    task_vector_kernel,
)
from evomerge.engine.lowrank import LowRank, RowBlocks, densify, factorize, write_factorized
from evomerge.errors import ConfigError
from evomerge.methods import MergeMethod

__all__ = ["fusable", "TensorEngine"]

_SPARSIFY = (None, "magnitude", "magnitude_outliers")
_CONSENSUS = (None, "sum")
Fetch = Callable[[str, str], torch.Tensor]


def fusable(method: MergeMethod, shared: dict) -> str | None:
    """Which fused kernel serves ``method`` with these global parameters: "task_vectors",
    "linear" or None (use the method's own function)."""
    if method.name == "linear":
        return "linear"
    if method.composition is None:
        return None
    sparsify, consensus = method.composition
    ok = sparsify in _SPARSIFY and consensus in _CONSENSUS and not shared.get("rescale")
    return "task_vectors" if ok else None


class TensorEngine:
    """Computes one output tensor of a plan into a preallocated ``out``.

    Magnitude thresholds of tensors of at least ``EXACT_BELOW`` entries come from sampled
    brackets (samples cached per source tensor for the engine's life), smaller ones from a
    full selection; the values are the exact order statistics either way.

    Args:
        compile: compile the fused kernels (the eager ones compute the same bits; tested).
    """

    def __init__(self, compile: bool = True) -> None:
        self._tv = FusedKernel(compile, task_vector_kernel)
        self._linear = FusedKernel(compile, linear_kernel)
        self._samples: dict = {}
        self._batch = TaskVectorBatch(self._tv, self._samples)

    @property
    def compiled(self) -> bool:
        """Whether the task-vector kernel runs compiled (it falls back to eager for good
        when compilation fails)."""
        return self._tv.compiled

    def run(self, task, method: MergeMethod, fetch: Fetch, compute_dtype: torch.dtype | None,
            out: torch.Tensor) -> None:
        """Merge ``task`` into ``out`` (cast once to ``out.dtype``), on ``out``'s device.

        ``fetch(model, name)`` returns a source tensor as stored, on ``out``'s device or in
        host memory (offload): task-vector merges then stream it to the device chunk by chunk,
        so device memory holds ``out`` plus a few chunks; other methods copy whole tensors. An
        adapted source's tensor is a :class:`~evomerge.engine.lowrank.LowRank` value, merged
        from its factors where the method allows (:mod:`evomerge.engine.lowrank`)."""
        inputs = [fetch(*r) for r in task.inputs]
        base = fetch(*task.base) if task.base is not None else None
        if any(isinstance(x, LowRank) for x in [*inputs, base]):
            self._adapted(task, method, inputs, base, compute_dtype, out)
            return
        if method.factored:
            raise ConfigError(f"Merge method {method.name!r} composes LoRA adapters: every "
                              f"model of the recipe must be an adapter of its base "
                              f"(BASE+ADAPTER), but {task.out_name!r} has full-model inputs.")
        self._dense(task, method, inputs, base, compute_dtype, out)

    def _dense(self, task, method: MergeMethod, inputs: list[torch.Tensor],
               base: torch.Tensor | None, compute_dtype: torch.dtype | None,
               out: torch.Tensor) -> None:
        from evomerge.engine.plan import execute

        dev = out.device
        kind = fusable(method, task.shared) if task.inputs else None
        if kind == "task_vectors" and base is not None:
            self._task_vectors([(task, base.reshape(-1), [e.reshape(-1) for e in inputs],
                                 out.view(-1))], method, compute_dtype)
        elif kind == "linear":
            tensors = [t.reshape(-1).to(dev, non_blocking=True) for t in inputs]
            w = torch.tensor(task.per_model["weight"], device=out.device,
                             dtype=compute_dtype or tensors[0].dtype)
            kernel = self._linear if compiles_exactly(w.dtype) else linear_kernel
            div = w.sum() if task.shared.get("normalize") else None
            kernel(out.view(-1), tensors, w, div)
        else:
            table = dict(zip(task.inputs, inputs))
            if task.base is not None:
                table[task.base] = base

            def cast(model: str, name: str) -> torch.Tensor:
                t = table[(model, name)].to(dev, non_blocking=True)
                return t if compute_dtype is None else t.to(compute_dtype)
            out.copy_(execute(task, method, cast))

    def _adapted(self, task, method: MergeMethod, inputs: list, base,
                 compute_dtype: torch.dtype | None, out: torch.Tensor) -> None:
        """A task with adapted inputs: from the factors when the merge is linear in them, by
        row blocks for the fused task-vector kernel, else densified per tensor."""
        dev = out.device
        w0 = base if base is not None else inputs[0]
        w0 = w0.base if isinstance(w0, LowRank) else w0
        cd = compute_dtype or w0.dtype
        f = factorize(method, inputs, base, task.shared, task.per_model, cd, dev)
        if f is not None:
            write_factorized(out, w0, f, cd)
            return
        if method.factored:
            raise ConfigError(f"Merge method {method.name!r} composes LoRA adapters of the "
                              f"recipe's base: every model must be BASE+ADAPTER over that base "
                              f"(tensor {task.out_name!r} has another input).")
        blocks = base is not None and not isinstance(base, LowRank) and all(
            isinstance(x, LowRank) and x.base is base for x in inputs)
        if blocks and fusable(method, task.shared) == "task_vectors":
            experts = [RowBlocks(x, cd, dev) for x in inputs]
            self._task_vectors([(task, base.reshape(-1), experts, out.view(-1))], method, cd)
            return
        self._dense(task, method, [densify(x, cd, dev) for x in inputs],
                    None if base is None else densify(base, cd, dev), cd, out)

    def _task_vectors(self, items: Sequence[tuple], method: MergeMethod,
                      compute_dtype: torch.dtype | None) -> None:
        """TIES-family merges of ``(task, flat base, flat experts (tensors or RowBlocks),
        flat out)`` items, together (:mod:`evomerge.engine.grouped`)."""
        sparsify, consensus = method.composition
        self._batch.run(items, sparsify, consensus is not None, compute_dtype)

    def run_plan(self, plan, fetch: Fetch, outs: Mapping[str, torch.Tensor],
                 tasks: Sequence | None = None) -> None:
        """Merge ``tasks`` of ``plan`` (default: all) into ``outs[task.out_name]``: the
        task-vector tensors of full models together (one wait for the device for all of
        them), the others one by one (:meth:`run`)."""
        method = plan.method
        together, rest = [], []
        for task in plan.tasks if tasks is None else tasks:
            if (task.inputs and task.base is not None and not method.factored
                    and fusable(method, task.shared) == "task_vectors"):
                inputs = [fetch(*r) for r in task.inputs]
                base = fetch(*task.base)
                if not any(isinstance(x, LowRank) for x in [*inputs, base]):
                    together.append((task, base.reshape(-1), [e.reshape(-1) for e in inputs],
                                     outs[task.out_name].view(-1)))
                    continue
            rest.append(task)
        if together:
            self._task_vectors(together, method, plan.compute_dtype)
        for task in rest:
            self.run(task, method, fetch, plan.compute_dtype, outs[task.out_name])
