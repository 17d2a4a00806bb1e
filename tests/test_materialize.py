"""In-memory materializer: in place, equal to the streaming merge, seeded like it."""

from __future__ import annotations

import pytest
import torch
from oracle import load_dir, max_abs_diff

from evomerge.engine.materialize import Materializer
from evomerge.engine.merge import merge_to_disk
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError


def _recipe(tiny, method="ties", wa=0.6, seed=0, extra=""):
    return load_recipe(f"""
merge_method: {method}
base_model: {tiny['base']}
models:
  - {{model: {tiny['a']}, parameters: {{weight: {wa}, density: 0.4}}}}
  - {{model: {tiny['b']}, parameters: {{weight: 0.5, density: [0.3, 0.9]}}}}
evomerge: {{seed: {seed}}}
{extra}""")


@pytest.fixture(scope="module")
def mat(tiny):
    return Materializer([tiny["a"], tiny["b"], tiny["c"]], base_model=tiny["base"])


def test_writes_in_place_and_returns_the_same_model(mat, tiny):
    ptrs = {k: v.data_ptr() for k, v in mat.model.state_dict().items()}
    first = mat.materialize(_recipe(tiny, wa=0.1))
    snapshot = {k: v.clone() for k, v in first.state_dict().items()}
    second = mat.materialize(_recipe(tiny, wa=0.9))
    assert second is first
    assert {k: v.data_ptr() for k, v in second.state_dict().items()} == ptrs
    assert max_abs_diff(snapshot, second.state_dict()) > 1e-3


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "della", "breadcrumbs"])
def test_equals_streaming_merge(mat, tiny, tmp_path, method):
    extra = "parameters: {epsilon: 0.1}" if method == "della" else ""
    recipe = _recipe(tiny, method=method, seed=11, extra=extra)
    merge_to_disk(recipe, tmp_path / "disk")
    disk = load_dir(tmp_path / "disk")
    state = {k: v for k, v in mat.materialize(recipe).state_dict().items() if k in disk}
    assert max_abs_diff(state, disk) <= 1e-6


def test_dare_seed_controls_the_drop(mat, tiny):
    a = {k: v.clone() for k, v in mat.materialize(_recipe(tiny, "dare_ties", seed=1)).state_dict().items()}
    b = {k: v.clone() for k, v in mat.materialize(_recipe(tiny, "dare_ties", seed=1)).state_dict().items()}
    c = mat.materialize(_recipe(tiny, "dare_ties", seed=2)).state_dict()
    assert max_abs_diff(a, b) == 0.0
    assert max_abs_diff(a, c) > 1e-4


def test_layer_swap_of_same_depth_is_materialized(mat, tiny):
    recipe = load_recipe(f"""
merge_method: passthrough
slices:
  - sources: [{{model: {tiny['a']}, layer_range: [0, 2]}}]
  - sources: [{{model: {tiny['b']}, layer_range: [2, 4]}}]
""")
    state = mat.materialize(recipe).state_dict()
    a, b = load_dir(tiny["a"]), load_dir(tiny["b"])
    assert torch.equal(state["model.layers.1.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(state["model.layers.2.mlp.up_proj.weight"], b["model.layers.2.mlp.up_proj.weight"])


def test_model_runs_after_materialize(mat, tiny):
    model = mat.materialize(_recipe(tiny))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, 48) and torch.isfinite(logits).all()


def test_recipe_of_another_depth_is_refused(mat, tiny):
    recipe = load_recipe(f"""
merge_method: passthrough
slices: [{{sources: [{{model: {tiny['a']}, layer_range: [0, 3]}}]}}]
""")
    with pytest.raises(ConfigError, match="does not fit the resident model"):
        mat.materialize(recipe)


def test_unloaded_model_is_refused(mat, tiny):
    recipe = load_recipe(f"""
merge_method: linear
models: [{{model: {tiny['partial']}, parameters: {{weight: 1.0}}}}]
""")
    with pytest.raises(ConfigError, match="did not load"):
        mat.materialize(recipe)


def test_tied_embeddings_stay_tied(tiny):
    m = Materializer([tiny["tied_a"]], base_model=tiny["tied_base"])
    model = m.materialize(load_recipe(f"""
merge_method: task_arithmetic
base_model: {tiny['tied_base']}
models: [{{model: {tiny['tied_a']}, parameters: {{weight: 0.5}}}}]
"""))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    base, a = load_dir(tiny["tied_base"]), load_dir(tiny["tied_a"])
    key = "model.embed_tokens.weight"
    assert torch.allclose(model.lm_head.weight, base[key] + 0.5 * (a[key] - base[key]), atol=1e-6)


def test_public_views_of_resident_tensors(mat, tiny):
    """What benchmarks read: a source's resident tensors (as stored on disk) and the output
    model's tensors (the model's own storage), and whether the kernels run compiled."""
    from oracle import load_dir

    stored = load_dir(tiny["a"])
    src = mat.source_tensors(tiny["a"])
    assert sorted(src) == sorted(stored)
    assert all(torch.equal(src[k], stored[k]) for k in stored)
    model = mat.materialize(_recipe(tiny))
    out = mat.output_tensors()
    state = model.state_dict()
    assert all(out[k].data_ptr() == state[k].data_ptr() for k in state)
    eager = Materializer([tiny["a"]], base_model=tiny["base"], compile=False)
    assert eager.kernels_compiled is False
