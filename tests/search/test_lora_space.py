"""Searching over LoRA adapters: adapter directories in a space are BASE+ADAPTER sources,
LoraHub's space (one weight per adapter) and per-layer-group weights, a search through the
driver, export that evomerge merge and mergekit-yaml build, an adapter's held-out row."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from oracle import load_dir, max_abs_diff

from evomerge.cli import main
from evomerge.engine.materialize import Materializer
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError
from evomerge.search.driver import run_search
from evomerge.search.genome import genome_of_models
from evomerge.search.space import load_space

MERGEKIT_YAML = shutil.which("mergekit-yaml", path=str(Path(sys.executable).parent)) or \
    shutil.which("mergekit-yaml")
ADAPTERS = ("qv", "qv2", "rs")


def _space(lora_tiny, root: Path, **over) -> dict:
    texts = root / "texts.jsonl"
    texts.write_text("".join(f'{{"text": "w{i} w{i + 3} w{i + 1} w{i + 7} w{i + 2}"}}\n'
                             for i in range(1, 30, 3)))
    doc = {"name": "lora_t", "base_model": lora_tiny["base"],
           "models": {k: lora_tiny[k] for k in ADAPTERS},
           "method": "task_arithmetic", "parameters": {"weight": [-1.0, 1.5]},
           "granularity": {"layers_per_group": "all", "embeddings": False},
           "evaluators": {"ppl": {"type": "perplexity", "path": str(texts), "name": "t",
                                  "test": {"path": str(texts), "name": "t"}}},
           "objectives": [{"evaluator": "ppl", "task": "t", "metric": "perplexity",
                           "direction": "minimize"}],
           "budget": {"trials": 6}, "optimizer": {"name": "cma", "popsize": 3, "seed": 0},
           "device": "cpu"}
    doc.update(over)
    return doc


def test_adapter_directories_are_adapters_over_the_base(lora_tiny, tmp_path):
    space = load_space(_space(lora_tiny, tmp_path))
    base = lora_tiny["base"]
    assert space.models == {k: f"{base}+{lora_tiny[k]}" for k in ADAPTERS}
    genome = genome_of_models(space)
    assert [g.name for g in genome.genes] == [f"weight.{k}.g0.all" for k in ADAPTERS]  # LoraHub
    recipe = genome.recipe({g.name: 0.5 for g in genome.genes})
    assert recipe.referenced_models() == [base, *space.models.values()]
    grouped = genome_of_models(load_space(_space(lora_tiny, tmp_path, method="lorahub", granularity={
        "layers_per_group": 2, "split_attn_mlp": True, "embeddings": False})))
    assert len(grouped.genes) == 3 * 2 * 2  # adapters x layer groups x (attention, MLP)


def test_data_flow_spaces_refuse_adapters(lora_tiny, tmp_path):
    doc = _space(lora_tiny, tmp_path, dfs={"repeats": 1}, method=None, parameters={},
                 granularity={})
    with pytest.raises(ConfigError, match="dfs' space runs the models' own layers, and "
                                          "models.qv is a LoRA adapter"):
        load_space(doc)


@pytest.fixture(scope="module")
def lora_study(lora_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_study")
    space = load_space(_space(lora_tiny, root))
    outcome = run_search(space, results_root=root / "results")
    return root, space, outcome


def test_search_over_adapters_exports_what_it_scored(lora_study, tmp_path):
    root, space, outcome = lora_study
    assert (outcome.evaluations, outcome.failed) == (6, 0)
    out = tmp_path / "best.yaml"
    assert main(["export", "lora_t", "--results", str(root / "results"), "--best",
                 "-o", str(out)]) == 0
    recipe = load_recipe(out)
    assert all("+" in m for m in recipe.referenced_models()[1:])
    assert main(["merge", str(out), str(tmp_path / "model"), "-q"]) == 0
    mat = Materializer(list(space.models.values()), base_model=space.base_model)
    memory = mat.materialize(recipe).state_dict()
    disk = load_dir(tmp_path / "model")
    assert max_abs_diff({k: memory[k] for k in disk}, disk) == 0.0
    assert main(["merge", str(out), str(tmp_path / "adapter"), "--adapter", "-q"]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    if MERGEKIT_YAML is not None:  # the exported recipe is a mergekit config, adapters included
        subprocess.run([MERGEKIT_YAML, str(out), str(tmp_path / "mk"), "--no-copy-tokenizer",
                        "--quiet", "--lora-merge-cache", str(tmp_path / "cache")], check=True,
                       capture_output=True)
        assert max_abs_diff(load_dir(tmp_path / "mk"), disk) <= 1e-6


def test_an_adapters_heldout_row_is_peft_merge_and_unload(lora_study, lora_tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from evomerge.scoring import score
    from evomerge.search.heldout import _whole_model, heldout_evaluators
    from evomerge.search.worker import Worker

    _, space, _ = lora_study
    worker = Worker(space)
    tests = heldout_evaluators(space)
    ours = _whole_model(worker, space.models["rs"], tests)
    base = AutoModelForCausalLM.from_pretrained(lora_tiny["base"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, lora_tiny["rs"]).merge_and_unload().eval()
    theirs = score(merged, worker.tokenizer, list(tests.values()))
    plain = _whole_model(worker, space.base_model, tests)
    assert abs(ours["t/perplexity"] - theirs["t/perplexity"]) <= 1e-4
    assert abs(ours["t/perplexity"] - plain["t/perplexity"]) > 1e-2
