"""Shim so the real mergekit 0.1.5 `mergekit-evolve` runs on a CPU-only machine (bench/peers.py).

bench/peers_mergekit.py puts this directory on PYTHONPATH for `ray start` and the driver, so
`sitecustomize.py` imports this module at interpreter start in every process of the run, Ray's
workers included. It edits no file of mergekit or lm_eval; it only hooks module imports.

(1) ALWAYS, and only when `vllm` is not importable: vLLM import stub.
    mergekit/evo/actors.py:136-138 evaluates the class annotation
    `lm_eval.models.vllm_causallms.VLLM` at import time, and mergekit/evo/monkeypatch.py:90-96
    (called by MergeActorBase.__init__, actors.py:75, and helpers.evaluate_model, helpers.py:43)
    does `import lm_eval.models.vllm_causallms` to set `VLLM.AUTO_MODEL_CLASS`. Since
    lm_eval 0.4.10, `lm_eval.models` is lazy and `vllm_causallms.py` has an unguarded
    `from vllm import LLM, ...`, so without vLLM `mergekit-evolve --help` already dies with
    AttributeError: module 'lm_eval.models' has no attribute 'vllm_causallms'.
    The stub serves `lm_eval.models.vllm_causallms` as a module holding an empty `class VLLM`
    (instantiating it raises) and imports it right after `lm_eval.models`, which is what
    lm_eval <= 0.4.9.2 did itself (eager import, vllm import guarded by try/except).
    The HF backend (no --vllm) only names VLLM, never instantiates it.

(2) MKEVO_FIX_INMEMORY=1: mergekit 0.1.5 bug, device-independent (GPU users hit it too).
    plan.py:369-379 `plan_in_memory` wraps each tensor task in
    `ReturnTensor(tensor_task=...)` whose field is typed `Task[torch.Tensor]`
    (io/tasks.py:254-256), but since 0.1.5 every tensor task is an
    `ExecuteMergeMethodTask(Task[Optional[torch.Tensor]])` (plan.py:235,
    merge_methods/task_adapter.py:56), so pydantic re-validates it into the abstract
    `Task[Tensor]` and `--in-memory` fails on its first evaluation for every merge method:
    TypeError: Can't instantiate abstract class Task[Tensor] with abstract methods arguments, execute
    Fix: mergekit.plan.ReturnTensor := a subclass of mergekit.io.tasks.ReturnTensor whose
    `tensor_task` field accepts any `Task` (isinstance checks in actors.py:315 still hold).

(3) MKEVO_CPU=1: on-disk mode (`--no-in-memory`) on a machine without CUDA.
    a) actors.py:94-97 (OnDiskMergeEvaluator, strategy pool) calls
       `get_torch_accelerator_module("cpu").empty_cache()`; `torch.cpu` has no `empty_cache`
       -> AttributeError. Adds a no-op `torch.cpu.empty_cache`.
    b) helpers.py:160-176 evaluates with lm_eval model "huggingface" and passes no device,
       so HFLM uses its default device="cuda" (lm_eval/models/huggingface.py:86), which is in
       its own device list, and loading fails with
       AssertionError: Torch not compiled with CUDA enabled. Makes HFLM's default "cpu"
       when CUDA is unavailable and the caller gave no device (or "cuda").
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_STUB = "lm_eval.models.vllm_causallms"
_HOOKS = {}  # module name -> callable(module) run right after the real module executes


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        class VLLM:
            """Placeholder: vLLM is not installed in this venv (HF backend only)."""

            def __init__(self, *a, **k):
                raise RuntimeError("vLLM is not installed (stub from _mkevo_shim); run without --vllm")

        VLLM.__module__ = _STUB
        module.VLLM = VLLM
        module.__mkevo_stub__ = True


class _HookLoader(importlib.abc.Loader):
    def __init__(self, real, hook):
        self.real, self.hook = real, hook

    def __getattr__(self, name):  # get_resource_reader, is_package, ... -> real loader
        return getattr(self.real, name)

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        self.real.exec_module(module)
        self.hook(module)


class _Finder(importlib.abc.MetaPathFinder):
    stub_vllm = False

    def find_spec(self, fullname, path, target=None):
        if fullname == _STUB and self.stub_vllm:
            return importlib.util.spec_from_loader(fullname, _StubLoader())
        hook = _HOOKS.get(fullname)
        if hook is not None:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _HookLoader(spec.loader, hook)
            return spec
        return None


def _after_lm_eval_models(module):
    importlib.import_module(_STUB)  # sets lm_eval.models.vllm_causallms (stub)


def _after_mergekit_plan(module):
    from mergekit.graph import Task
    from mergekit.io.tasks import ReturnTensor

    class ReturnAnyTensor(ReturnTensor):
        tensor_task: Task  # was Task[torch.Tensor]; ExecuteMergeMethodTask is Task[Optional[Tensor]]

    ReturnAnyTensor.__name__ = ReturnAnyTensor.__qualname__ = "ReturnTensor"
    module.ReturnTensor = ReturnAnyTensor


def _after_hf(module):
    import torch

    cls = module.HFLM
    orig = cls.__init__
    if getattr(orig, "__mkevo__", False):
        return

    def __init__(self, *args, **kwargs):
        if not torch.cuda.is_available() and kwargs.get("device", "cuda") in (None, "cuda"):
            kwargs["device"] = "cpu"
        orig(self, *args, **kwargs)

    __init__.__mkevo__ = True
    cls.__init__ = __init__


def _after_torch(module):
    if not hasattr(module.cpu, "empty_cache"):
        module.cpu.empty_cache = lambda: None


def _install():
    f = _Finder()
    try:
        f.stub_vllm = importlib.util.find_spec("vllm") is None
    except (ImportError, ValueError):
        f.stub_vllm = True
    if f.stub_vllm:
        _HOOKS["lm_eval.models"] = _after_lm_eval_models
    if os.environ.get("MKEVO_FIX_INMEMORY") == "1":
        _HOOKS["mergekit.plan"] = _after_mergekit_plan
    if os.environ.get("MKEVO_CPU") == "1":
        _HOOKS["lm_eval.models.huggingface"] = _after_hf
        _HOOKS["torch"] = _after_torch
    if _HOOKS or f.stub_vllm:
        sys.meta_path.insert(0, f)


if not any(type(x).__name__ == "_Finder" and type(x).__module__ == __name__ for x in sys.meta_path):
    _install()
