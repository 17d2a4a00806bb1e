"""mergekit-evolve configs in evomerge: the same genes as mergekit-evolve's own ``ModelGenome``
(the oracle: count and, per gene, the merged model it builds), runs on the mini zoo, and every
key or flag it cannot honour refused with one sentence."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from evomerge.cli.app import main
from evomerge.engine.materialize import Materializer
from evomerge.errors import ConfigError
from evomerge.search.evolve_import import METHOD_PARAMS, EvolveFlags, genotype_names, import_evolve
from evomerge.search.genome import make_genome

# The general example of mergekit's docs/evolve.md, and its filters example.
DOCS_EXAMPLE = """
genome:
    models:
       - {a}
       - {b}
    merge_method: dare_ties
    base_model: {base}
    tokenizer_source: null # optional
    layer_granularity: 8

    # optional:
    normalize: false
    allow_negative_weights: false
    smooth: false
    filters:
      - self_attn
      - mlp
tasks:
  - name: {task}
    weight: 1.0 # optional
    metric: "acc,none" # defaults to acc,none
  - name: {task2}
"""


def every_key(a: str, b: str, base: str, task: str, task2: str, granularity: int) -> dict:
    """A config with every key mergekit-evolve reads."""
    return {"genome": {"models": [a, b, base], "merge_method": "ties", "base_model": base,
                       "tokenizer_source": "base", "layer_granularity": granularity,
                       "normalize": True, "allow_negative_weights": True,
                       "filters": ["self_attn", "mlp", "embed_tokens"], "smooth": True},
            "tasks": [task, {"name": task2, "weight": -0.5, "metric": "acc,none"}],
            "limit": 6, "num_fewshot": 0, "shuffle": True, "random_init": True,
            "apply_chat_template": False, "fewshot_as_multiturn": False}


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> dict[str, str]:
    """base + two fine-tunes with 16 layers, so the docs' layer_granularity 8 divides them."""
    from models import make_model

    root = tmp_path_factory.mktemp("deep16")
    base = make_model(root / "base", 0, layers=16)
    return {"base": str(base), "a": str(make_model(root / "a", 1, base)),
            "b": str(make_model(root / "b", 2, base))}


def _configs(m: dict[str, str]) -> dict[str, dict]:
    docs = yaml.safe_load(DOCS_EXAMPLE.format(task="t1", task2="t2", **m))
    no_filters = copy.deepcopy(docs)
    del no_filters["genome"]["filters"]
    linear = {"genome": {"models": [m["a"], m["b"]], "merge_method": "linear",
                         "layer_granularity": 0, "smooth": True}, "tasks": ["t1"]}
    arith = {"genome": {"models": [m["a"], m["b"]], "merge_method": "task_arithmetic",
                        "base_model": m["base"], "layer_granularity": 4,
                        "allow_negative_weights": True, "filters": ["mlp"]}, "tasks": ["t1"]}
    return {"docs": docs, "docs_no_filters": no_filters, "linear": linear, "arith": arith,
            "every_key": every_key(m["a"], m["b"], m["base"], "t1", "t2", 4)}


def _mergekit_genome(cfg: dict):
    from mergekit.evo.genome import ModelGenome, ModelGenomeDefinition

    return ModelGenome(ModelGenomeDefinition.model_validate(cfg["genome"]))


@pytest.mark.parametrize("which", ["docs", "docs_no_filters", "linear", "arith", "every_key"])
def test_gene_count_is_mergekit_evolves(deep, which):
    cfg = _configs(deep)[which]
    imported = import_evolve(cfg)
    genome = make_genome(imported.space, imported.num_layers)
    oracle = _mergekit_genome(cfg).initial_genotype().numel()
    assert genome.dim == imported.genes == oracle
    names = genotype_names(imported.space, imported.num_layers,
                           METHOD_PARAMS[cfg["genome"]["merge_method"]])
    assert sorted(names) == sorted(g.name for g in genome.genes)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["docs", "linear", "arith", "every_key"])
def test_each_gene_builds_what_mergekit_evolve_builds(deep, which, tmp_path):
    """A genotype inside the bounds (where mergekit's |x| and clamp change nothing) merges to
    the same tensors through mergekit-evolve's config and through the imported space."""
    from oracle import mergekit_merge

    cfg = _configs(deep)[which]
    method = cfg["genome"]["merge_method"]
    imported = import_evolve(cfg)
    genome = make_genome(imported.space.model_copy(update={"dtype": "float32",
                                                           "out_dtype": "float32"}),
                         imported.num_layers)
    names = genotype_names(imported.space, imported.num_layers, METHOD_PARAMS[method])
    x = np.random.default_rng(3).uniform(0.05, 0.95, len(names))
    if method == "dare_ties":  # DARE's random drops differ between programs: keep every delta
        x[[i for i, n in enumerate(names) if n.startswith("density.")]] = 1.0
    theirs = _mergekit_genome(cfg).genotype_merge_config(x).model_dump(mode="json",
                                                                       exclude_none=True)
    theirs["dtype"] = "float32"
    expected = mergekit_merge(yaml.safe_dump(theirs), tmp_path / "mk")
    recipe = genome.recipe(dict(zip(names, x.tolist())))
    base = imported.space.base_model
    models = [p for p in imported.space.models.values() if p != base]
    state = Materializer(models, base).materialize(recipe).state_dict()
    diff = max((state[k].float() - expected[k].float()).abs().max().item() for k in expected)
    assert diff < 1e-6, diff


@pytest.mark.slow
def test_docs_example_and_every_key_run_on_the_zoo(mini_zoo, tmp_path):
    from evomerge.search.driver import run_search

    m = {k: str(mini_zoo / k) for k in ("base", "math", "lang")}
    tasks = {"task": "zoo_add_l1_validation", "task2": "zoo_maxmin_l2_validation"}
    docs = yaml.safe_load(DOCS_EXAMPLE.format(a=m["math"], b=m["lang"], base=m["base"], **tasks))
    docs["genome"]["layer_granularity"] = 1  # the zoo has 2 layers, not 8k
    docs.update(limit=6, apply_chat_template=False)
    flags = EvolveFlags(max_fevals=3, task_search_path=[str(mini_zoo / "tasks")], batch_size=8)
    for cfg in (docs, every_key(m["math"], m["lang"], m["base"], granularity=1, **tasks)):
        imported = import_evolve(cfg, flags, name=f"evo_{len(cfg)}")
        assert imported.genes == _mergekit_genome(cfg).initial_genotype().numel()
        out = run_search(imported.space.model_copy(update={"device": "cpu"}),
                         results_root=str(tmp_path))
        assert (out.stopped, out.failed, out.evaluations) == ("budget", 0, 3)


def test_flags_become_space_settings(deep):
    flags = EvolveFlags(max_fevals=250, sigma0=0.3, random_seed=7, batch_size=4, timeout=600,
                        force_population_size=9, storage_path="runs", num_gpus=2)
    cfg = _configs(deep)["every_key"]
    imported = import_evolve(cfg, flags)
    space = imported.space
    assert (space.budget.trials, space.budget.wall_time) == (250, 600)
    opt = space.optimizer
    # weights span [-1, 1] (allow_negative_weights): sigma0 is in units of that span
    assert (opt.name, opt.seed, opt.popsize, opt.sigma0, opt.x0) == ("cma", 7, 9, 0.15, "random")
    assert space.seed == 7 and space.searched == {"weight": (-1.0, 1.0), "density": (0.0, 1.0)}
    assert space.fixed == {"normalize": True, "int8_mask": True}
    gran = space.granularity
    assert (gran.layers_per_group, gran.filters, gran.smooth, gran.embeddings) == (
        4, ["self_attn", "mlp", "embed_tokens"], True, False)
    harness = space.evaluators["harness"].options()
    assert harness == {"tasks": ["t1", "t2"], "apply_chat_template": False,
                       "fewshot_as_multiturn": False, "batch_size": 4, "limit": 6,
                       "num_fewshot": 0, "shuffle": True, "shuffle_seed": 7}
    assert [(o.task, o.metric, o.direction, o.weight) for o in space.objectives] == [
        ("t1", "acc", "maximize", 1.0), ("t2", "acc", "minimize", 0.5)]
    assert imported.search_args == ["--results", "runs", "--workers", "2", "--num-gpus", "1"]


def test_wandb_flags_become_the_spaces_tracker(deep, tmp_path, capsys):
    """--wandb logs to Weights & Biases as in mergekit-evolve (project `--wandb-project` or
    "mergekit-evolve", entity as given), through the space's tracking block; without --wandb
    the project and entity do nothing there either, and a note says so."""
    cfg = _configs(deep)["docs"]
    space = import_evolve(cfg, EvolveFlags(wandb=True)).space
    assert space.tracking.model_dump(exclude_defaults=True) == {
        "type": "wandb", "project": "mergekit-evolve"}
    space = import_evolve(cfg, EvolveFlags(wandb=True, wandb_project="p", wandb_entity="e")).space
    assert (space.tracking.type, space.tracking.project, space.tracking.entity) == ("wandb", "p", "e")
    imported = import_evolve(cfg, EvolveFlags(wandb_project="p"))
    assert imported.space.tracking is None
    assert any("no effect without --wandb" in n for n in imported.notes)
    src = tmp_path / "evolve.yml"
    src.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "space.yaml"
    assert main(["import-evolve", str(src), "-o", str(out), "--wandb", "--wandb-project",
                 "merges"]) == 0
    assert "note: --wandb:" in capsys.readouterr().out
    assert yaml.safe_load(out.read_text())["tracking"] == {"type": "wandb", "project": "merges"}


@pytest.mark.parametrize("change, words", [
    ({"genome": {"merge_method": "slerp"}}, "genome.merge_method 'slerp' cannot be honoured"),
    ({"genome": {"merge_method": "della"}}, "not one of mergekit-evolve's"),
    ({"genome": {"layer_granularity": 3}}, "layer_granularity 3 does not divide"),
    ({"genome": {"tokenizer_source": "union"}}, "tokenizer_source 'union' cannot be honoured"),
    ({"genome": {"smoth": True}}, "smoth"),
    ({"tasks": [{"name": "t1", "weight": 0}]}, "weight 0"),
    ({"lmit": 5}, "lmit"),
])
def test_a_key_it_cannot_honour_is_one_sentence(deep, change, words):
    cfg = _configs(deep)["docs"]
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=words):
        import_evolve(cfg)


def test_cli_writes_the_space_or_refuses_with_exit_2(deep, tmp_path, capsys):
    src = tmp_path / "evolve.yml"
    src.write_text(yaml.safe_dump(_configs(deep)["docs"]))
    out = tmp_path / "space.yaml"
    assert main(["import-evolve", str(src), "-o", str(out), "--vllm"]) == 2
    err = capsys.readouterr().err
    assert "--vllm cannot be honoured" in err and err.count(".") <= 3 and not out.exists()
    assert main(["import-evolve", str(src), "-o", str(out), "--max-fevals", "40",
                 "--storage-path", "runs", "--no-in-memory"]) == 0
    text = capsys.readouterr().out
    assert "note: --no-in-memory" in text and f"evomerge search {out} --results runs" in text
    written = yaml.safe_load(out.read_text())
    assert written["budget"] == {"trials": 40} and written["name"] == "evolve"
    assert main(["import-evolve", str(src), "-o", str(out)]) == 2  # no silent overwrite


@pytest.mark.parametrize("file, name", [(".hid.yml", "hid"), ("-v.yml", "v"),
                                        ("é x.yaml", "x"), ("....yml", "evolve")])
def test_the_study_name_from_the_file_name_is_safe(deep, tmp_path, file, name):
    """The space's name comes from the file's when --name is not given: a name evomerge
    refuses (a hidden file's ``.hid``) was an error that did not say to pass --name."""
    src = tmp_path / file
    src.write_text(yaml.safe_dump(_configs(deep)["docs"]))
    assert import_evolve(src).space.name == name


def test_base_listed_among_models_keeps_its_genes(deep):
    """mergekit-evolve gives a base that is also in ``models`` genes of its own (that change
    nothing for task-vector methods); the imported genome has them too."""
    cfg = _configs(deep)["every_key"]
    imported = import_evolve(cfg)
    genome = make_genome(imported.space, imported.num_layers)
    assert any(g.name.startswith("weight.base_2.") for g in genome.genes)
    recipe = genome.recipe(genome.from_unit(np.full(genome.dim, 0.5)))
    srcs = [s.model for s in recipe.slices[0].sources]
    assert srcs.count(deep["base"]) == 1 and Path(recipe.base_model) == Path(deep["base"])


def test_smooth_interpolates_between_group_anchors(deep):
    """Layer i of L takes the anchors' value at t = i / (L - 1) (mergekit's gradient rule),
    and the per-layer view shows the same value."""
    from evomerge.search.layers import layer_table

    imported = import_evolve(_configs(deep)["linear"] | {
        "genome": {**_configs(deep)["linear"]["genome"], "layer_granularity": 4}})
    space = imported.space.model_copy(update={"dtype": "float32", "out_dtype": "float32"})
    genome = make_genome(space, 16)
    params = genome.from_unit(np.linspace(0, 1, genome.dim))
    recipe = genome.recipe(params)
    plan = Materializer(list(space.models.values()), space.base_model).plan(recipe)
    alias = next(iter(space.models))
    anchors = [params[f"weight.{alias}.g{g}.all"] for g in range(4)]
    table = layer_table(space, 16, params)
    col = table["header"].index(f"weight[{alias}].all")
    for layer in (0, 5, 15):
        t = layer / 15 * 3
        want = anchors[int(t)] + (t - int(t)) * (anchors[min(3, int(t) + 1)] - anchors[int(t)])
        task = next(x for x in plan.tasks if x.out_name == f"model.layers.{layer}.mlp.up_proj.weight")
        assert task.per_model["weight"][0] == pytest.approx(want)
        assert table["rows"][layer]["values"][col] == pytest.approx(want)
    head = next(x for x in plan.tasks if x.out_name == "lm_head.weight")
    assert head.per_model["weight"][0] == pytest.approx(anchors[0])  # t = 0, as in mergekit


def test_random_init_starts_at_a_seeded_random_point(deep):
    from evomerge.search.optimizers import make_optimizer

    space = import_evolve(_configs(deep)["every_key"], EvolveFlags(random_seed=5)).space
    genome = make_genome(space, 16)
    xs = [np.asarray(make_optimizer(space.optimizer, genome, space.objectives)._es.x0)
          for _ in range(2)]
    assert np.array_equal(xs[0], xs[1]) and not np.allclose(xs[0], genome.start_point())
    assert xs[0].min() >= 0 and xs[0].max() <= 1 and xs[0].std() > 0.2


def test_search_on_a_mergekit_evolve_config_says_to_import_it(deep, tmp_path):
    from evomerge.search.space import load_space

    src = tmp_path / "evolve.yml"
    src.write_text(yaml.safe_dump(_configs(deep)["docs"]))
    with pytest.raises(ConfigError, match=r"evolve\.yml is a mergekit-evolve config; convert "
                                          r"it first: evomerge import-evolve"):
        load_space(src)
