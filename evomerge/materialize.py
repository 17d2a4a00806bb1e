"""In-memory materializer: the search calls this thousands of times, so it never touches disk.

It loads every source model once onto a device, keeps task vectors (and their sorted
magnitudes, for magnitude-based trimming) when the method uses them, and writes each new
recipe's merged weights into one resident ``PreTrainedModel`` in place::

    mat = Materializer(["zoo/base", "zoo/expert_a", "zoo/expert_b"], base_model="zoo/base")
    model = mat.materialize(recipe)      # same object every call, new weights
    logits = model(input_ids).logits
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.errors import ConfigError
from evomerge.fused import FusedKernel, fusable, linear_kernel, thresholds
from evomerge.plan import MergePlan, TensorTask, build_plan, execute
from evomerge.recipe import Recipe
from evomerge.sources import ModelSource

__all__ = ["Materializer", "resolve_device"]


def resolve_device(device: str | None) -> torch.device:
    """``None``/"auto" -> CUDA if available else CPU; anything else as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Materializer:
    """Resident source weights + one resident model, overwritten per recipe.

    Args:
        models: every model a recipe may reference (paths as written in recipes).
        base_model: the shared base; also the template for the resident model's config.
        device: "cpu", "cuda", "cuda:N" or "auto".
        dtype: dtype for resident weights (default: as stored).
        cache_task_vectors: keep ``model - base`` for task-vector methods (memory for speed).
        fused: run task arithmetic / TIES / breadcrumbs through the fused kernel
            (:mod:`evomerge.fused`), compiled with ``torch.compile`` when ``compile`` is true.
    """

    def __init__(self, models: Sequence[str], base_model: str | None = None,
                 device: str | None = "cpu", dtype: torch.dtype | None = None,
                 cache_task_vectors: bool = True, fused: bool = True,
                 compile: bool = True) -> None:
        from transformers import AutoModelForCausalLM  # heavy import, only when used

        refs = list(dict.fromkeys(([base_model] if base_model else []) + list(models)))
        self.device = resolve_device(device)
        self.dtype = dtype
        self.base_model = base_model
        self.sources = {ref: ModelSource(ref) for ref in refs}
        self._weights = {ref: {n: src.get(n, self.device, dtype) for n in src.names}
                         for ref, src in self.sources.items()}
        template = self.sources[refs[0]]
        self.model = AutoModelForCausalLM.from_pretrained(
            template.path, dtype=dtype or "auto").to(self.device).eval()
        self._params = self.model.state_dict(keep_vars=True)
        self._expected = set(template.names)  # what every recipe must write, no more, no less
        self.num_layers = template.num_layers
        self._cache = cache_task_vectors
        self._deltas: dict[tuple[str, str, str], torch.Tensor] = {}
        self._sorted: dict[tuple[str, str, str], torch.Tensor] = {}
        self._kernels = ({"task_vectors": FusedKernel(compile),
                          "linear": FusedKernel(compile, fn=linear_kernel)} if fused else {})

    def _fetch(self, model: str, name: str) -> torch.Tensor:
        return self._weights[model][name]

    def _delta(self, ref: tuple[str, str], base: tuple[str, str]) -> torch.Tensor:
        key = (*ref, base[0])
        if key not in self._deltas:
            delta = self._fetch(*ref) - self._fetch(*base)
            if not self._cache:
                return delta
            self._deltas[key] = delta
        return self._deltas[key]

    def _sorted_mag(self, ref: tuple[str, str], base: tuple[str, str]) -> torch.Tensor:
        key = (*ref, base[0])
        if key not in self._sorted:
            values = self._delta(ref, base).abs().reshape(-1).sort().values
            if not self._cache:
                return values
            self._sorted[key] = values
        return self._sorted[key]

    def plan(self, recipe: Recipe) -> MergePlan:
        """Plan ``recipe`` against the resident sources; ConfigError if it does not fit."""
        missing = [m for m in recipe.referenced_models() if m not in self.sources]
        if missing:
            raise ConfigError(f"Recipe references model {missing[0]!r}, which this materializer "
                              f"did not load (loaded: {', '.join(self.sources)}).")
        plan = build_plan(recipe, self.sources)
        fits = {t.out_name for t in plan.tasks} == self._expected and all(
            tuple(self._params[t.out_name].shape) == t.shape for t in plan.tasks)
        if not fits:
            raise ConfigError(
                f"Recipe output does not fit the resident model: the recipe builds "
                f"{plan.num_layers} layers, the resident model has {self.num_layers}; merge "
                f"recipes that change the depth to disk with `evomerge merge`.")
        return plan

    def _fused(self, task: TensorTask, plan: MergePlan, out: torch.Tensor) -> None:
        sparsify, consensus = plan.method.composition
        n = len(task.inputs)
        bounds = [thresholds(sparsify, self._sorted_mag(r, task.base) if sparsify else None,
                             task.per_model.get("density", (1.0,) * n)[i],
                             task.per_model.get("gamma", (0.01,) * n)[i])
                  for i, r in enumerate(task.inputs)]
        lo, hi = (torch.tensor(v, device=self.device, dtype=out.dtype) for v in zip(*bounds))
        w = torch.tensor(task.per_model["weight"], device=self.device, dtype=out.dtype)
        lam = torch.tensor(task.shared.get("lambda", 1.0), device=self.device, dtype=out.dtype)
        deltas = [self._delta(r, task.base).view(-1) for r in task.inputs]
        self._kernels["task_vectors"](
            out.view(-1), self._fetch(*task.base).view(-1), deltas, lo, hi, w, lam,
            bool(task.shared.get("normalize")), consensus is not None)

    def _fused_linear(self, task: TensorTask, out: torch.Tensor) -> None:
        w = torch.tensor(task.per_model["weight"], device=self.device, dtype=torch.float32)
        tensors = [self._fetch(*r).view(-1) for r in task.inputs]
        self._kernels["linear"](out.view(-1), tensors, w, bool(task.shared.get("normalize")))

    def _compute(self, task: TensorTask, plan: MergePlan) -> torch.Tensor:
        method = plan.method
        if method.delta_fn is None or task.base is None:
            return execute(task, method, self._fetch)
        params = {**task.shared, **task.per_model}
        if method.stochastic:
            params["generator"] = torch.Generator(device=self.device).manual_seed(task.seed)
        if "density" in method.param_names and not method.stochastic:
            params["sorted_magnitudes"] = [self._sorted_mag(r, task.base) for r in task.inputs]
        deltas = [self._delta(r, task.base) for r in task.inputs]
        return method.delta_fn(deltas, self._fetch(*task.base), **params)

    @torch.no_grad()
    def materialize(self, recipe: Recipe) -> torch.nn.Module:
        """Write ``recipe``'s merged weights into the resident model and return it."""
        plan = self.plan(recipe)
        for task in plan.tasks:
            out = self._params[task.out_name]
            kind = fusable(plan.method, task.shared) if self._kernels and task.inputs else None
            if kind == "task_vectors" and task.base is not None:
                self._fused(task, plan, out)
            elif kind == "linear" and out.dtype == torch.float32:
                self._fused_linear(task, out)
            else:
                out.copy_(self._compute(task, plan))
        return self.model
