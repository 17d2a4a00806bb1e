"""Search = export: for bf16/fp16 sources the weights the resident materializer scores are
bit-identical to what ``evomerge merge`` writes from the same recipe, for every method and
whatever compute ``dtype`` the recipe names; and the one tie rule, checked against mergekit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from oracle import load_dir, mergekit_merge
from test_parity import RECIPES, _fill

from evomerge.engine.materialize import Materializer
from evomerge.engine.merge import merge_to_disk
from evomerge.engine.recipe import load_recipe

STOCHASTIC = {
    "dare_ties": """
merge_method: dare_ties
base_model: BASE
models:
  - {model: A, parameters: {weight: 0.6, density: [0.3, 0.9]}}
  - {model: B, parameters: {weight: 0.5, density: 0.5}}
evomerge: {seed: 3}
""",
    "dare_linear": """
merge_method: dare_linear
base_model: BASE
models:
  - {model: A, parameters: {weight: 0.6, density: 0.4}}
  - {model: C, parameters: {weight: 0.4, density: 0.7}}
""",
    "della": """
merge_method: della
base_model: BASE
models:
  - {model: A, parameters: {weight: 0.6, density: 0.5, epsilon: 0.1}}
  - {model: B, parameters: {weight: 0.5, density: 0.6, epsilon: 0.2}}
""",
    "della_linear": """
merge_method: della_linear
base_model: BASE
models:
  - {model: A, parameters: {weight: 0.7, density: 0.5, epsilon: 0.1}}
  - {model: B, parameters: {weight: 0.3, density: 0.6, epsilon: 0.2}}
""",
}
CASES = {**{k: v for k, v in RECIPES.items() if k != "passthrough_layer_swap"}, **STOCHASTIC}


@pytest.fixture(scope="module")
def resident(half):
    return Materializer([half["a"], half["b"], half["c"]], base_model=half["base"])


def _states_equal(ours: dict[str, torch.Tensor], disk: dict[str, torch.Tensor]) -> None:
    assert set(disk) <= set(ours)
    for name, t in disk.items():
        assert ours[name].dtype == t.dtype, name
        assert torch.equal(ours[name], t), (name, int((ours[name] != t).sum()))


@pytest.mark.parametrize("compute", ["float32", "as_stored"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_in_memory_weights_are_the_exported_weights_bit_for_bit(half, resident, tmp_path,
                                                                name, compute):
    dtypes = f"dtype: float32\nout_dtype: {half['dtype']}\n" if compute == "float32" else ""
    recipe = load_recipe(_fill(CASES[name], half) + dtypes)
    merge_to_disk(recipe, tmp_path / "disk")
    disk = load_dir(tmp_path / "disk")
    _states_equal(resident.materialize(recipe).state_dict(), disk)


def test_offload_scores_the_same_bits(half, tmp_path):
    recipe = load_recipe(_fill(CASES["ties"], half) + f"dtype: float32\nout_dtype: {half['dtype']}\n")
    mat = Materializer([half["a"], half["b"], half["c"]], base_model=half["base"], offload=True)
    merge_to_disk(recipe, tmp_path / "disk")
    _states_equal(mat.materialize(recipe).state_dict(), load_dir(tmp_path / "disk"))


def test_a_recipe_of_another_output_dtype_is_refused(half, resident):
    from evomerge.errors import ConfigError

    recipe = load_recipe(_fill(CASES["ties"], half) + "dtype: float32\n")  # writes float32
    with pytest.raises(ConfigError, match="resident model holds"):
        resident.materialize(recipe)


def _tie_mask(sources: list[dict[str, torch.Tensor]], base: dict[str, torch.Tensor], name: str,
              densities: list[float]) -> torch.Tensor:
    """Entries where some expert's |delta| equals its k-th largest (k = int(density n))."""
    b = base[name].float()
    mask = torch.zeros(b.shape, dtype=torch.bool)
    for src, d in zip(sources, densities):
        mag = (src[name].float() - b).abs()
        k = max(1, int(d * mag.numel()))
        t = mag.reshape(-1).kthvalue(mag.numel() - k + 1).values
        mask |= mag == t
    return mask


@pytest.mark.slow
def test_ties_differ_from_mergekit_only_at_threshold_ties(smollm2, tmp_path):
    """bf16 weights tie at density thresholds; we keep every tied entry, mergekit keeps exactly
    k by sort order. Every difference must sit on a tie; elsewhere the two agree."""
    text = f"""
merge_method: ties
base_model: {smollm2['base']}
models:
  - {{model: {smollm2['a']}, parameters: {{weight: 0.6, density: 0.3}}}}
  - {{model: {smollm2['b']}, parameters: {{weight: 0.5, density: 0.55}}}}
dtype: float32
out_dtype: float32
"""
    expected = mergekit_merge(text, tmp_path / "mk")
    merge_to_disk(load_recipe(text), tmp_path / "ours")
    ours = load_dir(tmp_path / "ours")
    srcs = [load_dir(smollm2[k]) for k in ("a", "b")]
    base = load_dir(smollm2["base"])
    ties = differing = 0
    for name, t in expected.items():
        diff = (ours[name] - t).abs() > 1e-6
        tie = _tie_mask(srcs, base, name, [0.3, 0.55])
        assert not (diff & ~tie).any(), name
        ties += int(tie.sum())
        differing += int(diff.sum())
    assert ties > 1000 and differing > 0  # ties are real in bf16 checkpoints, and they matter


@pytest.mark.slow
def test_real_model_is_held_as_m_plus_2_copies(smollm2):
    """Base + 2 experts of SmolLM2 in bf16: the sources are held once each, as stored, and the
    output model once (its tied head shares the embedding): exactly 4 model copies."""
    from evomerge.engine.sources import ModelSource

    mat = Materializer([smollm2["a"], smollm2["b"]], base_model=smollm2["base"])
    model_bytes = ModelSource(smollm2["base"]).nbytes
    assert mat.resident_bytes() == {"sources": 3 * model_bytes, "model": 0}  # not yet used
    mat.model  # noqa: B018 -- allocated on first use (a data-flow search never needs it)
    held = mat.resident_bytes()
    assert held == {"sources": 3 * model_bytes, "model": model_bytes}
    assert mat.model.lm_head.weight.data_ptr() == mat.model.model.embed_tokens.weight.data_ptr()


def test_real_tokenizers_that_differ_are_refused(smollm2, tmp_path):
    """Same 49152 ids, two tokens swapped in SmolLM2's BPE tokenizer: refused by name."""
    import json
    import shutil

    from evomerge.errors import ModelError

    other = tmp_path / "other_tok"
    other.mkdir()
    for f in Path(smollm2["a"]).iterdir():  # the weights linked (they may be), the rest copied
        if f.suffix == ".safetensors":
            (other / f.name).symlink_to(f)
        elif f.name != "tokenizer.json":
            shutil.copy(f, other / f.name)
    tok = json.loads((Path(smollm2["a"]) / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[1000:1002]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    recipe = load_recipe(f"""
merge_method: task_arithmetic
base_model: {smollm2['base']}
models: [{{model: {other}, parameters: {{weight: 0.5}}}}]
""")
    with pytest.raises(ModelError, match=r"Tokenizer mismatch: .*\(token 1000 is"):
        merge_to_disk(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()
