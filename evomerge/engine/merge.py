"""``evomerge merge RECIPE OUT``: build a merged model on disk, one tensor at a time.

Peak memory is the inputs of one tensor plus its result. The model is written into a
temporary directory beside ``OUT`` and renamed into place at the end, so an interrupted or
failed merge leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from evomerge.engine.card import Provenance, model_card
from evomerge.engine.fused import TensorEngine
from evomerge.engine.json_data import read_json
from evomerge.engine.lora_source import DiskFetch, LoraSource, open_source
from evomerge.engine.outputs import (
    check_free_space,
    disk_full,
    follow_umask,
    is_disk_full,
)
from evomerge.engine.plan import MergePlan, TensorTask, build_plan
from evomerge.engine.recipe import Recipe
from evomerge.engine.sources import TOKENIZER_FILES, ModelSource, torch_dtype
from evomerge.engine.vocab import output_tokenizer
from evomerge.engine.vocab_align import aligned_inputs
from evomerge.engine.writer import ShardedWriter, TensorMeta
from evomerge.errors import ConfigError, ModelError

__all__ = ["open_sources", "merge_to_disk", "merge_stages", "TOKENIZER_FILES"]

def open_sources(recipe: Recipe) -> dict[str, ModelSource | LoraSource]:
    """Open every model the recipe names (headers only; ``BASE+ADAPTER`` as an adapted
    source); ModelError if one is missing or an adapter does not fit its base."""
    return {ref: open_source(ref) for ref in recipe.referenced_models()}


def _output_metas(plan: MergePlan, sources: Mapping[str, ModelSource]) -> list[TensorMeta]:
    out = torch_dtype(plan.recipe.out_dtype or plan.recipe.dtype)
    metas = []
    for task in plan.tasks:
        model, name = task.inputs[0] if task.inputs else task.base
        metas.append(TensorMeta(task.out_name, task.shape, out or sources[model].dtype(name)))
    return metas


def _tokenizer_files(plan: MergePlan, sources: Mapping[str, ModelSource]) -> list[Path]:
    """The base's (or the first model's) tokenizer files: copied as they are when the sources
    share one tokenizer; otherwise :func:`_write_tokenizer` saves the built one (about as big)
    and takes ``generation_config.json`` from them. Each lies in the donor's directory:
    :class:`ModelSource` confined them when it opened (a symlink out would copy any file the
    user can read into a model they may share)."""
    donor = sources[plan.recipe.tokenizer_base].path
    return [p for p in (donor / n for n in TOKENIZER_FILES) if p.is_file()]


def _write_tokenizer(plan: MergePlan, files: list[Path], tmp: Path) -> None:
    """The output tokenizer: the base's files when the sources share it; built
    (:mod:`evomerge.engine.vocab`) or given the recipe's chat template and saved by
    transformers otherwise, with the base's ``generation_config.json``."""
    recipe = plan.recipe
    if plan.vocab is not None or recipe.chat_template is not None:
        output_tokenizer(recipe, plan.vocab).save_pretrained(str(tmp))
        files = [p for p in files if p.name == "generation_config.json"]
    for src in files:
        shutil.copy2(src, tmp / src.name)


def merge_to_disk(recipe: Recipe, out: str | Path, device: str = "cpu",
                  max_shard_bytes: int = 2 * 1024**3,
                  progress: Callable[[int, int], None] | None = None,
                  extra_files: Mapping[str, str] | None = None,
                  provenance: Provenance | None = None,
                  base_model_ids: Sequence[str] | None = None) -> MergePlan:
    """Merge ``recipe`` into the model directory ``out``.

    Args:
        recipe: a validated recipe.
        out: output directory; must not exist yet (or be empty).
        device: where the tensor math runs ("cpu", "cuda", "cuda:1", ...).
        max_shard_bytes: largest safetensors shard.
        progress: called as ``progress(done, total)`` after each tensor.
        extra_files: more files to write into ``out`` (name -> text), with the model.
        provenance: the study and trial the recipe came from, for the model card
            (:mod:`evomerge.engine.card`); its front plot is written as ``front.png``.
        base_model_ids: Hub ids for the card's ``base_model`` (default: the sources that
            are Hub ids).

    Returns:
        The executed plan.

    Raises:
        ConfigError, ModelError: bad recipe or sources; nothing is written.
        OutputError: the disk is full (checked first, and while writing); nothing is left.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Output {str(out)!r} is a file; give a directory to build into.")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"Output directory {str(out)!r} exists and is not empty.")
    sources = open_sources(recipe)
    plan = build_plan(recipe, sources)
    metas = _output_metas(plan, sources)
    tokenizer = _tokenizer_files(plan, sources)
    needed = sum(m.nbytes for m in metas) + sum(p.stat().st_size for p in tokenizer) + 65536
    out.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(out, needed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_weights(plan, sources, metas, tmp, device, max_shard_bytes, progress)
        (tmp / "config.json").write_text(json.dumps(plan.config, indent=2))
        _write_tokenizer(plan, tokenizer, tmp)
        (tmp / "mergekit_config.yml").write_text(recipe.to_yaml())
        (tmp / "README.md").write_text(model_card(plan, provenance, base_model_ids,
                                                  name=out.name))
        if provenance is not None and provenance.plot_png:
            (tmp / "front.png").write_bytes(provenance.plot_png)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        follow_umask(tmp)  # mkdtemp made it 0700
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full(out, needed) from None
        raise
    return plan


def _write_weights(plan: MergePlan, sources: Mapping[str, ModelSource], metas: list[TensorMeta],
                   tmp: Path, device: str, max_shard_bytes: int,
                   progress: Callable[[int, int], None] | None) -> None:
    fetch = DiskFetch(dict(sources), device)

    def inputs(task: TensorTask) -> Callable[[str, str], torch.Tensor]:
        if not task.vocab:
            return fetch
        return aligned_inputs(task, plan.vocab, fetch, plan.compute_dtype)
    # The same engine as the resident materializer: compiled on CUDA, where the materializer
    # compiles too (Triton may contract mul+add into FMA, so both sides must run one kernel);
    # eager on CPU, whose compiled kernels compute the same bits (tested).
    engine = TensorEngine(compile=torch.device(device).type == "cuda")
    with torch.no_grad(), ShardedWriter(tmp, metas, max_shard_bytes) as writer:
        for i, (task, meta) in enumerate(zip(plan.tasks, metas)):
            fetch.clear()
            out = torch.empty(task.shape, dtype=meta.dtype, device=device)
            engine.run(task, plan.method, inputs(task), plan.compute_dtype, out)
            if out.is_floating_point() and not bool(torch.isfinite(out).all()):
                raise ModelError(f"The merge of tensor {task.out_name!r} has non-finite values "
                                 f"(inf or NaN: huge weights or a source with non-finite "
                                 f"weights); nothing was written.")
            writer.write(task.out_name, out)
            if progress:
                progress(i + 1, len(plan.tasks))
        writer.finish()


STAGE_MARK = "evomerge_stage.json"  # in a built stage: the hash of the recipe it was built from


def merge_stages(path: str | Path, out: str | Path, stages_dir: str | Path | None = None,
                 warn: Callable[[str], None] | None = None,
                 provenance: Provenance | None = None,
                 base_model_ids: Sequence[str] | None = None,
                 **options: Any) -> list[MergePlan]:
    """Build the recipe file ``path``. A multi-document recipe (``mergekit-multi``'s
    format: named stages, then the final recipe, which names them as models) builds each
    stage into ``stages_dir/<name>`` (default ``<out>-stages``), then the final one into
    ``out``. A single document is one plain merge. ``options`` go to :func:`merge_to_disk`;
    ``warn`` hears each :meth:`Recipe.warnings` sentence before anything is built;
    ``provenance`` and ``base_model_ids`` go to the final model's card.

    A stage directory records the SHA-256 of the recipe it was built from (with the hashes
    of the stages it uses) in ``evomerge_stage.json``: it is reused while that matches and
    rebuilt when the stage's recipe changed. A directory there that evomerge did not build
    (no record) is refused, never taken as built. Every document and stage directory is
    checked before anything is built. Returns the plans of what was built, in order.

    Raises:
        ConfigError: a bad chain or stage name, or a foreign directory in the stages dir.
    """
    from evomerge.engine.derived import load_chain, rename_models
    from evomerge.engine.recipe import load_recipe
    from evomerge.engine.safe_yaml import read_yaml_text

    path = Path(path)
    text = read_yaml_text(path) if path.is_file() else ""
    if "\n---" not in text:  # one document: a plain recipe (its errors name the file)
        recipe = load_recipe(path)
        for sentence in recipe.warnings() if warn else []:
            warn(sentence)
        return [merge_to_disk(recipe, out, provenance=provenance,
                              base_model_ids=base_model_ids, **options)]
    out = Path(out)
    stages_dir = Path(stages_dir) if stages_dir else out.with_name(f"{out.name}-stages")
    chain = load_chain(text, str(path))
    where = {name: str(stages_dir / name) for name, _ in chain[:-1]}
    recipes, keys = [], {}
    for i, (name, doc) in enumerate(chain):  # validate everything first: nothing built yet
        recipe = load_recipe(rename_models(doc, where))
        recipes.append(recipe)
        if i < len(chain) - 1:
            used = sorted(keys[n] for n in keys if where[n] in recipe.referenced_models())
            keys[name] = _stage_key(recipe, used)
            _check_stage_dir(stages_dir / name, name, keys[name])
    for recipe in recipes if warn else []:
        for sentence in recipe.warnings():
            warn(sentence)
    plans = []
    for (name, _), recipe in zip(chain[:-1], recipes):
        target = stages_dir / name
        if _stage_key_of(target) == keys[name]:
            continue  # built from this very recipe
        if target.exists():
            shutil.rmtree(target)  # a stale stage of ours (checked above)
        mark = json.dumps({"stage": name, "recipe_sha256": keys[name]})
        plans.append(merge_to_disk(recipe, target, extra_files={STAGE_MARK: mark}, **options))
    plans.append(merge_to_disk(recipes[-1], out, provenance=provenance,
                               base_model_ids=base_model_ids, **options))
    return plans


def _stage_key(recipe: Recipe, used: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join([recipe.to_yaml(), *used]).encode()).hexdigest()


def _stage_key_of(target: Path) -> str | None:
    """The recipe hash a stage directory was built from, or None."""
    try:
        return str(read_json(target / STAGE_MARK, STAGE_MARK)["recipe_sha256"])
    except (ModelError, KeyError, TypeError):
        return None


def _check_stage_dir(target: Path, name: str, key: str) -> None:
    if not target.exists() or target.is_dir() and not any(target.iterdir()):
        return
    if target.is_dir() and _stage_key_of(target) is not None:
        return  # ours: reused if current, rebuilt if stale
    raise ConfigError(f"Stage directory {str(target)!r} exists but evomerge did not build it "
                      f"for stage {name!r} (no {STAGE_MARK}); remove it or choose another "
                      "--stages directory.")
