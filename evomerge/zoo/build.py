"""``evomerge zoo build [DIR]``: build the embedded model zoo (deterministic given a seed).

Layout of a finished zoo::

    DIR/zoo.json                      manifest: seed, profile, models, tasks, build log
    DIR/base, DIR/math, DIR/lang, DIR/sub          HF models (safetensors + tokenizer)
    DIR/tasks/<task>/{validation,test}.jsonl       evaluation splits (train is generated)
    DIR/tasks/zoo_<task>[_gen]_<split>.yaml        lm-eval tasks (log-likelihood / generation)

The base is pretrained on counting, copying, the L1<->L2 dictionary and L1 max/min (no
arithmetic). Experts fine-tune the base: ``math`` learns L1 addition (task A) and replays L1
max/min, the circuit ``lang`` builds on (without it no merge kept half of both experts'
scores on seed 0); ``lang`` learns L2 max/min and translation (task B) with only its
embeddings, head, first and last blocks trainable (a partial fine-tune, as practitioners
often do: its change sits in particular layers, which layer-swap genes can find); ``sub``
learns L1 subtraction (a third expert for 3-way merges). A math expert restricted to the
middle blocks was tried: it reached 11.8% exact match on A instead of 59.6%, and swapping
its middle into lang then equals task arithmetic (the changes are disjoint) at 3.8% A /
23.6% B, so math trains everything. Nobody sees L2 addition (task C), the composite a merge
has to discover.

The build happens in ``DIR.partial`` and is renamed into place when complete: an interrupted
build leaves no zoo behind and the next call starts over cleanly; a finished zoo with the same
seed and profile is reused.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from evomerge.errors import ConfigError
from evomerge.zoo.data import write_jsonl
from evomerge.zoo.model import ZooModelConfig, build_tokenizer, factorise, new_model, save
from evomerge.zoo.tasks import sample
from evomerge.zoo.train import Stage, train

__all__ = ["Profile", "PROFILES", "EVAL_TASKS", "build_zoo", "load_manifest", "ZOO_MODELS",
           "expert_seed", "expert_start"]

EVAL_TASKS = {"add_l1": "A: addition in L1 (math expert)",
              "maxmin_l2": "B: max/min in L2 (lang expert)",
              "add_l2": "C: addition in L2 (composite, no model trained on it)",
              "sub_l1": "subtraction in L1 (sub expert)"}
ZOO_MODELS = ("base", "math", "lang", "sub")
_BASE_MIX = {"count_l1": 1, "count_l2": 1, "copy": 1, "to_l2": 1, "to_l1": 1, "maxmin_l1": 1}


def _replay(mix: dict[str, float], share: float = 0.2) -> dict[str, float]:
    """``mix`` plus ``share`` of the base mix (replay keeps experts from forgetting)."""
    total = sum(_BASE_MIX.values())
    return {**{t: share * w / total for t, w in _BASE_MIX.items()},
            **{t: (1 - share) * w for t, w in mix.items()}}


@dataclass(frozen=True)
class Profile:
    """Model size, step counts and evaluation split sizes of one zoo flavour."""

    model: ZooModelConfig = ZooModelConfig()
    base_steps: int = 1000
    expert_steps: dict[str, int] = field(default_factory=lambda: {"math": 500, "lang": 300,
                                                                    "sub": 400})
    base_lr: float = 3e-3
    expert_lr: dict[str, float] = field(default_factory=lambda: {"math": 2e-3, "lang": 2e-3,
                                                                 "sub": 2e-3})
    # Each expert's own data mix (task -> weight), before 20% replay of the base mix. math
    # also replays L1 max/min, the circuit lang's task B builds on: without it math's drift
    # broke that circuit and no merge kept half of both experts' scores on seed 0 (docs/zoo.md,
    # "Designs tried").
    expert_mix: dict[str, dict[str, float]] = field(default_factory=lambda: {
        "math": {"add_l1": 0.8, "maxmin_l1": 0.2},
        "lang": {"maxmin_l2": 0.6, "to_l2": 0.2, "to_l1": 0.2},
        "sub": {"sub_l1": 1.0}})
    batch: int = 64
    eval_examples: int = 500  # per task and split


PROFILES = {
    "full": Profile(),
    # Tests: builds in seconds; too small to learn the tasks well, but every path is real.
    "mini": Profile(model=ZooModelConfig(hidden=32, layers=2, heads=2, intermediate=64),
                    base_steps=30, expert_steps={"math": 15, "lang": 15, "sub": 15},
                    batch=16, eval_examples=40),
}


def _lang_trainable(layers: int) -> Callable[[str], bool]:
    keep = ("embed_tokens", "lm_head", "model.norm", "layers.0.", f"layers.{layers - 1}.")
    return lambda name: any(k in name for k in keep)



def _stages(p: Profile) -> dict[str, Stage]:
    trainable = {"lang": _lang_trainable(p.model.layers)}  # the others train everything
    return {e: Stage(_replay(p.expert_mix[e]), p.expert_steps[e], p.expert_lr[e], p.batch,
                     trainable=trainable.get(e)) for e in ("math", "lang", "sub")}


def _write_tasks(root: Path, p: Profile, seed: int) -> dict[str, dict[str, str]]:
    files = {}
    for task in EVAL_TASKS:
        split_files = {}
        for split in ("validation", "test"):
            path = root / "tasks" / task / f"{split}.jsonl"
            write_jsonl(path, sample(task, split, p.eval_examples, seed))
            split_files[split] = str(path.relative_to(root))
        files[task] = split_files
    return files


def write_lm_eval_yamls(zoo: Path) -> Path:
    """(Re)write the lm-eval task YAMLs of ``zoo`` with absolute data paths; returns the
    include path to give lm-eval's ``TaskManager``."""
    tasks_dir = zoo.resolve() / "tasks"
    for task, split in ((t, s) for t in EVAL_TASKS for s in ("validation", "test")):
        # lm-eval scores a task's test split whenever it has one, so each split gets its own
        # task whose only split is the one wanted: zoo_add_l1_validation, zoo_add_l1_test.
        data = {split: str(tasks_dir / task / f"{split}.jsonl")}
        common = {"dataset_path": "json", "dataset_kwargs": {"data_files": data},
                  "test_split": split, "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}"}
        ll = {"task": f"zoo_{task}_{split}", **common, "output_type": "loglikelihood",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
        gen = {"task": f"zoo_{task}_gen_{split}", **common, "output_type": "generate_until",
               "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
               "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                                "higher_is_better": True}]}
        for doc in (ll, gen):
            (tasks_dir / f"{doc['task']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return tasks_dir


def load_manifest(zoo: str | Path) -> dict:
    """The manifest of a finished zoo; ConfigError if ``zoo`` is not one."""
    path = Path(zoo) / "zoo.json"
    if not path.is_file():
        raise ConfigError(f"{str(zoo)!r} is not a built zoo (no zoo.json); run "
                          f"`evomerge zoo build {zoo}`.")
    return json.loads(path.read_text())


def expert_seed(seed: int, name: str) -> int:
    """The seed of expert ``name``'s fine-tune in a zoo built with ``seed``."""
    return seed * 100 + ZOO_MODELS.index(name)  # math 1, lang 2, sub 3


def expert_start(base_dir: Path, seed: int, name: str):
    """The model expert ``name``'s fine-tune starts from: the base, seeded as the build seeds
    it (so a re-fine-tune with the same stage reproduces the zoo's expert)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(expert_seed(seed, name))
    model = LlamaForCausalLM.from_pretrained(base_dir)
    factorise(model)
    return model


def _check_settings(out: Path, manifest: dict, p: Profile) -> None:
    """A zoo built with other training settings (an older evomerge) is not silently reused."""
    want = json.loads(json.dumps(asdict(p)))
    have = manifest.get("profile_settings", {})
    for key, value in want.items():
        if have.get(key) != value:
            raise ConfigError(f"{str(out)!r} was built with {key}={have.get(key)!r}, this "
                              f"evomerge builds {key}={value!r}; delete the directory to rebuild "
                              "it, or choose another one.")


def build_zoo(out: str | Path, seed: int = 0, profile: str = "full",
              progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Build (or reuse) a zoo in ``out``; returns its manifest.

    Args:
        out: zoo directory.
        seed: seeds weights, data sampling and splits' example choice.
        profile: "full" (the product's default) or "mini" (tests).
        progress: ``progress(stage, done, total)`` after every training step.
    """
    out = Path(out)
    if profile not in PROFILES:
        raise ConfigError(f"Unknown zoo profile {profile!r}. Available: {', '.join(PROFILES)}.")
    if (out / "zoo.json").is_file():
        manifest = load_manifest(out)
        if manifest["seed"] == seed and manifest["profile"] == profile:
            _check_settings(out, manifest, PROFILES[profile])
            return manifest
        raise ConfigError(f"{str(out)!r} holds a zoo with seed {manifest['seed']} and profile "
                          f"{manifest['profile']!r}; choose another directory.")
    p = PROFILES[profile]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    tok = build_tokenizer()
    log: dict[str, dict] = {}

    def run(name: str, model, stage: Stage, stage_seed: int) -> None:
        start = time.time()
        loss = train(model, stage, stage_seed,
                     (lambda s: progress(name, s, stage.steps)) if progress else None)
        log[name] = {"steps": stage.steps, "final_loss": round(loss, 4),
                     "seconds": round(time.time() - start, 1)}
        save(model, tok, tmp / name)

    files = _write_tasks(tmp, p, seed)  # first: a task problem fails before any training
    base = new_model(p.model, seed)
    factorise(base)
    run("base", base, Stage(_BASE_MIX, p.base_steps, p.base_lr, p.batch), seed)
    for name, stage in _stages(p).items():
        run(name, expert_start(tmp / "base", seed, name), stage, expert_seed(seed, name))
    manifest = {"seed": seed, "profile": profile, "models": list(ZOO_MODELS),
                "base": "base", "tasks": {t: {"description": d, "files": files[t]}
                                          for t, d in EVAL_TASKS.items()},
                "profile_settings": asdict(p), "training": log,
                "build_seconds": round(time.time() - t0, 1)}
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    write_lm_eval_yamls(out)
    (out / "zoo.json").write_text(json.dumps(manifest, indent=2))  # written last: "finished"
    return manifest
