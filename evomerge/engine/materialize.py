"""In-memory materializer: the search calls this thousands of times, so it never touches disk.

It reads every source model once and keeps, per worker, exactly (M + 2) model copies for a
base and M experts: the base, each expert (as stored: an expert is base + task vector, and the
task vector is computed per tensor inside the merge kernel, never kept), and one output model
that each recipe's merged weights are written into in place::

    mat = Materializer(["zoo/base", "zoo/expert_a", "zoo/expert_b"], base_model="zoo/base")
    model = mat.materialize(recipe)      # same object every call, new weights
    logits = model(input_ids).logits

LoRA adapters (``BASE+ADAPTER`` references, :mod:`evomerge.engine.lora_source`) cost what they weigh:
the base is resident once, each adapter keeps only its factors A and B, and each candidate is
written from the factors (:mod:`evomerge.engine.lowrank`). A tensor no adapter touches is not
copied at all: the output model's parameter is the base's own tensor (read only by the model),
so memory is the base, the adapters and the output's adapted tensors.

The output model is built from its config with parameters on the meta device and then given
storage once, so it never costs a second load of the base. With ``offload`` the sources stay in
host memory (pinned when CUDA is present) and stream tensor by tensor to the device, where only
the output model and one tensor's workspace live. Sources whose tokenizers differ (a recipe's
tokenizer rule, :mod:`evomerge.engine.vocab`) also keep their token rows re-indexed to the output
vocabulary, once: one more embedding (and LM head) per source. Every tensor goes through the same
:class:`~evomerge.engine.fused.TensorEngine` as ``evomerge merge``, in the recipe's compute ``dtype``
and cast once to the resident dtype, so the weights scored here are the weights export builds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from evomerge.engine.derived import DerivedSource, open_model
from evomerge.engine.fused import TensorEngine
from evomerge.engine.lora import AdapterWeights
from evomerge.engine.lora_source import LoraSource
from evomerge.engine.lowrank import LowRank, untouched
from evomerge.engine.path_model import PathModels
from evomerge.engine.paths import Step, recipe_path
from evomerge.engine.plan import MergePlan, TensorTask, build_plan
from evomerge.engine.recipe import Recipe
from evomerge.engine.shell import empty_model
from evomerge.engine.sources import ModelSource, torch_dtype
from evomerge.engine.vocab import VocabPlan, build_vocab, output_tokenizer
from evomerge.engine.vocab_align import aligned_inputs
from evomerge.errors import ConfigError

_ALIGNED_KEPT = 4  # re-indexed token-row sets kept (a search uses one or two)

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
        device: where merges run and the resident model lives: "cpu", "cuda", "cuda:N", "auto".
        dtype: the resident (output) model's dtype; default: the base's stored dtype. A recipe
            whose output dtype (``out_dtype``, else ``dtype``, else the sources') differs is
            refused, since the model it scores would not be the model export builds.
        offload: keep the sources in host memory (pinned with CUDA) and stream them to
            ``device`` per tensor; device memory is then one model plus a tensor's workspace.
        compile: compile the fused kernels with ``torch.compile``.
        recipes: recipe YAML of model references that name a recipe (a pinned study point);
            each is built once into a resident source (:mod:`evomerge.engine.derived`).
        grouped: merge a candidate's task-vector tensors together, waiting for the device
            once (:meth:`~evomerge.engine.fused.TensorEngine.run_plan`); False: one tensor at
            a time, as ``evomerge merge`` streams them (the same bits either way). Default:
            grouped on CUDA only (on a CPU there is no device to wait for, and one tensor at
            a time was faster: bench/merge_kernels.py, 1.12 s against 1.49 s on SmolLM2).
    """

    def __init__(self, models: Sequence[str], base_model: str | None = None,
                 device: str | None = "cpu", dtype: torch.dtype | None = None,
                 offload: bool = False, compile: bool = True,
                 recipes: Mapping[str, str] | None = None, grouped: bool | None = None) -> None:
        refs = list(dict.fromkeys(([base_model] if base_model else []) + list(models)))
        self.device = resolve_device(device)
        self.base_model = base_model
        self.offload = offload
        self.sources = {ref: open_model(ref, recipes=recipes) for ref in refs}
        template = self.sources[refs[0]]
        self.dtype = dtype or template.stored_dtype
        store = torch.device("cpu") if offload else self.device
        pin = offload and self.device.type == "cuda"
        self._weights = {ref: self._load(src, store, pin) for ref, src in self.sources.items()
                         if not isinstance(src, LoraSource)}
        # adapter ref -> (the key of its base in _weights, its factors)
        self._adapters: dict[str, tuple[str, AdapterWeights]] = {}
        for ref, src in self.sources.items():
            if isinstance(src, LoraSource):
                self._adapters[ref] = (self._base_key(src, store, pin),
                                       src.adapter.load(store, pin))
        self._shared: set[str] = set()  # output tensors that are the base's own tensor
        self._template = template
        self._model: torch.nn.Module | None = None  # built on first use: a data-flow search
        self._params: dict[str, torch.Tensor] = {}  # never needs the merged model's bytes
        # the second output model (slot 1: merged while slot 0 is scored), its shared tensors
        self._spare: tuple[torch.nn.Module, dict[str, torch.Tensor], set[str]] | None = None
        self._expected = set(template.names)  # what every recipe must write, no more, no less
        self.num_layers = template.num_layers
        self._engine = TensorEngine(compile)
        self.grouped = self.device.type == "cuda" if grouped is None else grouped
        self._paths = None
        self._rows: int | None = None  # the resident model's vocabulary rows, if a rule sets them
        self._vocabs: dict[str, VocabPlan] = {}   # output vocabularies by tokenizer settings
        self._aligned: dict[tuple, dict[str, torch.Tensor]] = {}  # re-indexed token rows
        self._tokenizers: dict[str, Any] = {}  # output tokenizers by tokenizer setting

    @property
    def model(self) -> torch.nn.Module:
        """The resident output model (one model's bytes, allocated on first use)."""
        if self._model is None:
            self._model = empty_model(self._template, self.dtype, self.device,
                                      self._rows)
            self._params = self._model.state_dict(keep_vars=True)
        return self._model

    def _slot(self, slot: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor], set[str]]:
        """Output model ``slot``, its tensors and which of them are the base's own: 0 is
        :attr:`model`; 1 a second one (allocated on first use) that a candidate can be merged
        into while the other is scored."""
        if slot == 0:
            return self.model, self._params, self._shared
        if slot != 1:
            raise ValueError(f"slot {slot} is not 0 or 1")
        if self._spare is None:
            self.model  # noqa: B018 -- slot 0 first: it fixes the vocabulary rows both share
            spare = empty_model(self._template, self.dtype, self.device, self._rows)
            self._spare = (spare, spare.state_dict(keep_vars=True), set())
        return self._spare

    @staticmethod
    def _load(src: ModelSource, store: torch.device, pin: bool) -> dict[str, torch.Tensor]:
        if isinstance(src, DerivedSource):  # a recipe: built once, here (PS+DFS)
            built = src.build(store)
            return {n: t.pin_memory() for n, t in built.items()} if pin else built
        weights = {}
        for name in src.names:
            t = src.get(name, store)
            weights[name] = t.pin_memory() if pin else t
        return weights

    def _base_key(self, src: LoraSource, store: torch.device, pin: bool) -> str:
        """The resident base of an adapter: a loaded model of the same directory, else its
        base, loaded here (once)."""
        where = src.base.path.resolve()
        for ref, other in self.sources.items():
            if isinstance(other, ModelSource) and other.path.resolve() == where:
                return ref
        if src.base.ref not in self._weights:
            self._weights[src.base.ref] = self._load(src.base, store, pin)
        return src.base.ref

    def _fetch(self, model: str, name: str) -> torch.Tensor | LowRank:
        if model in self._adapters:
            key, weights = self._adapters[model]
            return weights.value(name, self._weights[key][name])
        return self._weights[model][name]  # the engine streams host-held tensors per chunk

    def plan(self, recipe: Recipe) -> MergePlan:
        """Plan ``recipe`` against the resident sources; ConfigError if it does not fit."""
        missing = [m for m in recipe.referenced_models() if m not in self.sources]
        if missing:
            raise ConfigError(f"Recipe references model {missing[0]!r}, which this materializer "
                              f"did not load (loaded: {', '.join(self.sources)}).")
        plan = build_plan(recipe, self.sources, self.vocab(recipe))
        if self._model is None and plan.vocab is not None:
            self._rows = plan.vocab.rows
        self.model  # noqa: B018 -- the shapes below are the resident model's
        fits = {t.out_name for t in plan.tasks} == self._expected and all(
            tuple(self._params[t.out_name].shape) == t.shape for t in plan.tasks)
        vocab_task = next((t for t in plan.tasks if t.vocab), None)
        if vocab_task and tuple(self._params[vocab_task.out_name].shape) != vocab_task.shape:
            raise ConfigError(
                f"Recipe builds a {vocab_task.shape[0]}-token vocabulary but the resident model "
                f"has {self._params[vocab_task.out_name].shape[0]} rows: the recipes one "
                f"materializer serves share one tokenizer rule.")
        if not fits:
            raise ConfigError(
                f"Recipe output does not fit the resident model: the recipe builds "
                f"{plan.num_layers} layers, the resident model has {self.num_layers}; merge "
                f"recipes that change the depth to disk with `evomerge merge`.")
        out = torch_dtype(recipe.out_dtype or recipe.dtype) or self.sources[
            recipe.referenced_models()[0]].stored_dtype
        if out != self.dtype:
            raise ConfigError(
                f"Recipe writes {str(out).removeprefix('torch.')} weights (out_dtype/dtype) but "
                f"the resident model holds {str(self.dtype).removeprefix('torch.')}; set the "
                f"recipe's out_dtype to match, or the materializer's dtype.")
        return plan

    @torch.no_grad()
    def materialize(self, recipe: Recipe, slot: int = 0) -> torch.nn.Module:
        """Write ``recipe``'s merged weights into the resident model (``slot`` 1: the second
        one) and return it; a data-flow recipe (``evomerge.path``) returns a path model over
        the resident layers instead (:mod:`evomerge.engine.path_model`)."""
        path = recipe_path(recipe)
        if path is not None:
            return self.path_model(path)
        plan = self.plan(recipe)
        model, params, shared = self._slot(slot)
        todo = []
        for task in plan.tasks:
            param = params[task.out_name]
            if not task.vocab and self._share_base(task, plan, param, shared):
                continue
            if task.out_name in shared:  # own storage again before anything is written
                param.data = torch.empty(param.shape, dtype=self.dtype, device=self.device)
                shared.discard(task.out_name)
            todo.append(task)
        outs = {t.out_name: params[t.out_name].data for t in todo}
        # token rows re-indexed to the output vocabulary go one tensor at a time (a few
        # tensors per model); the rest as a group, or one at a time
        for task in (t for t in todo if t.vocab):
            self._engine.run(task, plan.method, self._vocab_fetch(plan, task),
                             plan.compute_dtype, outs[task.out_name])
        rest = [t for t in todo if not t.vocab]
        if self.grouped:
            self._engine.run_plan(plan, self._fetch, outs, rest)
        else:
            for task in rest:
                self._engine.run(task, plan.method, self._fetch, plan.compute_dtype,
                                 outs[task.out_name])
        return model

    def vocab(self, recipe: Recipe) -> VocabPlan | None:
        """The output vocabulary of ``recipe``'s tokenizer rule (None without one), built once
        per rule and model set (tokenizer files only)."""
        settings = recipe.tokenizer_settings
        if settings is None:
            return None
        refs = recipe.referenced_models()
        key = json.dumps([settings.key, recipe.tokenizer_base, refs])
        if key not in self._vocabs:
            missing = [m for m in refs if m not in self.sources]
            if missing:
                raise ConfigError(f"Recipe references model {missing[0]!r}, which this "
                                  f"materializer did not load (loaded: {', '.join(self.sources)}).")
            self._vocabs[key] = build_vocab(settings, recipe.tokenizer_base, refs, self.sources)
        return self._vocabs[key]

    def tokenizer(self, recipe: Recipe) -> Any:
        """The tokenizer of ``recipe``'s model (the one `evomerge merge` writes with it):
        evaluate the resident model with this one. Loaded once per tokenizer setting."""
        settings = recipe.tokenizer_settings
        key = json.dumps([settings.key if settings else None, recipe.tokenizer_source,
                          recipe.tokenizer_base, recipe.chat_template,
                          recipe.referenced_models()])
        if key not in self._tokenizers:
            self._tokenizers[key] = output_tokenizer(recipe, self.vocab(recipe))
        return self._tokenizers[key]

    def _vocab_fetch(self, plan: MergePlan, task: TensorTask) -> Callable:
        """Re-indexed token rows of ``task``'s inputs: they depend on the tokenizer rule and
        the models only, so they are computed once and kept (a few layouts at most)."""
        key = (task.out_name, task.inputs, task.base, task.vocab_base, plan.compute_dtype,
               id(plan.vocab))
        if key not in self._aligned:
            if len(self._aligned) >= _ALIGNED_KEPT:
                self._aligned.pop(next(iter(self._aligned)))
            fetch = aligned_inputs(task, plan.vocab, self._fetch, plan.compute_dtype)
            refs = [*task.inputs, *([task.base] if task.base else [])]
            self._aligned[key] = {m: fetch(m, n) for m, n in refs}
        done = self._aligned[key]
        return lambda model, name: done[model]

    def _share_base(self, task, plan: MergePlan, param: torch.nn.Parameter,
                    shared: set[str]) -> bool:
        """Point ``param`` at the base's own tensor when the merge leaves that tensor as it is
        (a tensor no adapter touches) and its bits would not change: resident dtype, device,
        and a compute dtype that holds it exactly. Its own storage, never written, is freed."""
        inputs = [self._fetch(*r) for r in task.inputs]
        base = self._fetch(*task.base) if task.base is not None else None
        w0 = untouched(plan.method, inputs, base, task.shared, task.per_model,
                       plan.compute_dtype or self.dtype)
        cd = plan.compute_dtype or (w0.dtype if w0 is not None else None)
        if w0 is None or w0.dtype != self.dtype or w0.device != param.device or not (
                cd == w0.dtype or (cd.itemsize > w0.dtype.itemsize and cd.is_floating_point)):
            return False
        if task.out_name not in shared:
            param.data = w0
            shared.add(task.out_name)
        return True

    def path_model(self, path: Sequence[Step]) -> torch.nn.Module:
        """The model of a data-flow ``path`` (a list of :class:`~evomerge.engine.paths.Step`):
        its layers reference the resident sources' tensors, no copy."""
        adapted = [s.model for s in path if s.model in self._adapters]
        if adapted:
            raise ConfigError(f"Path references the adapted model {adapted[0]!r}: data-flow "
                              "paths run resident layers of full models, not LoRA adapters.")
        missing = [s.model for s in path if s.model not in self._weights]
        if missing:
            raise ConfigError(f"Path references model {missing[0]!r}, which this materializer "
                              f"did not load (loaded: {', '.join(self.sources)}).")
        if self._paths is None:
            self._paths = PathModels(self._weights, str(self._template.path), self.device)
        return self._paths.build(path)

    def source_tensors(self, ref: str) -> Mapping[str, torch.Tensor]:
        """The resident tensors of source ``ref`` (read-only by contract: every candidate
        is computed from them)."""
        return self._weights[ref]

    def output_tensors(self) -> Mapping[str, torch.Tensor]:
        """The resident output model's tensors by name (allocated on first use)."""
        self.model  # noqa: B018 -- allocates the output model
        return self._params

    @property
    def kernels_compiled(self) -> bool:
        """Whether the fused merge kernels run compiled (``torch.compile``)."""
        return self._engine.compiled

    def resident_bytes(self) -> dict[str, int]:
        """Bytes held on each side: ``sources`` (base + experts, adapters' factors) and
        ``model`` (the output model, and the second one where a candidate was merged into
        slot 1)."""
        def size(ts) -> int:
            return sum(t.numel() * t.element_size() for t in ts)
        outputs = [(self._params, self._shared)] + ([self._spare[1:]] if self._spare else [])
        unique = {p.data_ptr(): p for params, shared in outputs
                  for n, p in params.items() if n not in shared}
        adapters = sum(w.nbytes for _, w in self._adapters.values())
        return {"sources": size(t for w in self._weights.values() for t in w.values()) + adapters,
                "model": size(unique.values())}
