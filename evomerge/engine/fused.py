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
streams tensor by tensor through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from evomerge.engine.grouped import TaskVectorBatch
from evomerge.engine.kernels import (
    FusedKernel,
    compiles_exactly,
    linear_kernel,
    task_vector_kernel,
)
from evomerge.methods import MergeMethod

__all__ = ["fusable", "TensorEngine"]

_SPARSIFY = (None, "magnitude", "magnitude_outliers")
_CONSENSUS = (None, "sum")
Fetch = Callable[[str, str], torch.Tensor]


def fusable(method: MergeMethod, shared: Mapping) -> str | None:
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
    """Computes output tensors of a plan into preallocated tensors.

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

    def run(self, task, method: MergeMethod, fetch: Fetch, compute_dtype: torch.dtype | None,
            out: torch.Tensor) -> None:
        """Merge ``task`` into ``out`` (cast once to ``out.dtype``), on ``out``'s device.

        ``fetch(model, name)`` returns a source tensor as stored, on ``out``'s device or in
        host memory (offload): task-vector merges then stream it to the device chunk by chunk,
        so device memory holds ``out`` plus a few chunks; other methods copy whole tensors."""
        from evomerge.engine.plan import execute

        dev = out.device
        kind = fusable(method, task.shared) if task.inputs else None
        if kind == "task_vectors" and task.base is not None:
            sparsify, consensus = method.composition
            self._batch.run([task], sparsify, consensus is not None, fetch, compute_dtype,
                            [out.view(-1)])
        elif kind == "linear":
            tensors = [fetch(*r).reshape(-1).to(dev, non_blocking=True) for r in task.inputs]
            w = torch.tensor(task.per_model["weight"], device=out.device,
                             dtype=compute_dtype or tensors[0].dtype)
            kernel = self._linear if compiles_exactly(w.dtype) else linear_kernel
            div = w.sum() if task.shared.get("normalize") else None
            kernel(out.view(-1), tensors, w, div)
        else:
            def cast(model: str, name: str) -> torch.Tensor:
                t = fetch(model, name).to(dev, non_blocking=True)
                return t if compute_dtype is None else t.to(compute_dtype)
            out.copy_(execute(task, method, cast))

    def run_plan(self, plan, fetch: Fetch, outs: Mapping[str, torch.Tensor]) -> None:
        """Merge every task of ``plan`` into ``outs[task.out_name]``: the task-vector tensors
        together (one wait for the device), the others one by one."""
        method = plan.method
        together = [t for t in plan.tasks if t.inputs and t.base is not None
                    and fusable(method, t.shared) == "task_vectors"]
        if together:
            sparsify, consensus = method.composition
            self._batch.run(together, sparsify, consensus is not None, fetch,
                            plan.compute_dtype, [outs[t.out_name].view(-1) for t in together])
        done = {id(t) for t in together}
        for task in plan.tasks:
            if id(task) not in done:
                self.run(task, method, fetch, plan.compute_dtype, outs[task.out_name])
