"""Data-flow path models: layers referenced (not copied), KV cache per slot, scales on the
residual stream -- and the export that mergekit builds into the same model."""

from __future__ import annotations

import inspect
import json
import subprocess

import pytest
import torch
from models import save_tokenizer, tiny_config
from oracle import mergekit_cli
from transformers import LlamaForCausalLM

from evomerge.engine.materialize import Materializer
from evomerge.engine.paths import Step, path_recipe, recipe_path

# A repeated layer (a1 twice), a switch between models both ways, non-unit scales.
PATH = [("a", 0, 1.0), ("a", 1, 1.3), ("b", 1, 0.7), ("a", 1, 1.6), ("b", 2, 0.8), ("a", 2, 1.1)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two 3-layer Llamas with hidden states of order 1 (initializer range 0.3), so the norm
    epsilon (1e-6) is far below the mean square it guards and the export identity is tight."""
    root = tmp_path_factory.mktemp("dfs")
    out = {}
    for name, seed in (("a", 11), ("b", 12)):
        torch.manual_seed(seed)
        cfg = tiny_config(layers=3)
        cfg.initializer_range = 0.3
        model = LlamaForCausalLM(cfg)
        model.save_pretrained(root / name)
        save_tokenizer(root / name)
        out[name] = str(root / name)
    return out


def steps(pair: dict[str, str], path=PATH) -> list[Step]:
    return [Step(pair[m], i, w) for m, i, w in path]


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


IDS = torch.tensor([[1, 5, 9, 2, 30, 7, 7, 41, 3, 18, 22, 6]])


def test_path_model_references_layers_and_follows_the_path(pair):
    mat = Materializer([pair["a"], pair["b"]], device="cpu")
    model = mat.path_model(steps(pair))
    assert model.config.num_hidden_layers == len(PATH)
    layers = model.model.layers
    a1 = mat._weights[pair["a"]]["model.layers.1.self_attn.q_proj.weight"]
    # slots 1 and 3 are both layer 1 of a: the same storage, no copy; distinct cache indices
    assert layers[1].self_attn.q_proj.weight.data_ptr() == a1.data_ptr()
    assert layers[3].self_attn.q_proj.weight.data_ptr() == a1.data_ptr()
    assert [m.self_attn.layer_idx for m in layers] == list(range(len(PATH)))
    assert mat.resident_bytes()["model"] == 0  # no merged model was allocated
    # the same computation by hand: embeddings of the first step's model, scaled layers,
    # final norm and head of the last step's model
    src = {k: LlamaForCausalLM.from_pretrained(v).eval() for k, v in pair.items()}
    with torch.no_grad():
        h = src["a"].model.embed_tokens(IDS)
        pos = torch.arange(IDS.shape[1])[None]
        rope = src["a"].model.rotary_emb(h, pos)
        mask = torch.full((IDS.shape[1],) * 2, float("-inf")).triu(1)[None, None]
        for m, i, w in PATH:
            h = src[m].model.layers[i](h * w, attention_mask=mask, position_ids=pos,
                                      position_embeddings=rope)
        last = src[PATH[-1][0]]
        want = last.lm_head(last.model.norm(h))
    torch.testing.assert_close(logits(model, IDS), want, rtol=1e-5, atol=1e-5)


def test_kv_cache_gives_each_slot_its_own_entry(pair):
    """Incremental decoding (one token at a time through the cache) equals the full forward
    pass: a repeated layer sharing a cache index would mix its two positions' keys."""
    model = Materializer([pair["a"], pair["b"]], device="cpu").path_model(steps(pair))
    full = logits(model, IDS)
    # transformers >= 5.2x names the cache argument `cache` (`past_key_values` deprecated)
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(IDS[:, :4], use_cache=True)
        cache, step_logits = out.past_key_values, [out.logits[:, -1]]
        for t in range(4, IDS.shape[1]):
            out = model(IDS[:, t:t + 1], use_cache=True, **{arg: cache})
            cache = out.past_key_values
            step_logits.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(step_logits, 1).float(), full[:, 3:], rtol=1e-4,
                               atol=1e-4)


def test_rebuilding_a_shorter_path_drops_the_rest(pair):
    mat = Materializer([pair["a"], pair["b"]], device="cpu")
    mat.path_model(steps(pair))
    short = mat.path_model(steps(pair, [("b", 0, 1.0), ("b", 1, 1.0), ("b", 2, 1.0)]))
    whole = LlamaForCausalLM.from_pretrained(pair["b"]).eval()
    torch.testing.assert_close(logits(short, IDS), logits(whole, IDS), rtol=1e-5, atol=1e-5)


def test_recipe_carries_the_path_and_inverse_running_scales(pair):
    recipe = path_recipe(steps(pair), dtype="float32")
    assert recipe_path(recipe) == steps(pair)
    running, want = 1.0, []
    for _, _, w in PATH:
        running *= w
        want.append(1.0 if running == 1.0 else 1.0 / running)
    got = [sl.sources[0].parameters["scale"][0].value if sl.sources[0].parameters else 1.0
           for sl in recipe.slices]
    assert [sl.sources[0].parameters is None for sl in recipe.slices] == [
        True, False, False, False, False, False]  # scale 1 writes no parameter
    assert got == pytest.approx(want, rel=1e-12)
    assert [sl.sources[0].layer_range for sl in recipe.slices] == [(i, i + 1) for _, i, _ in PATH]


def test_export_builds_the_same_model_with_mergekit_and_evomerge(pair, tmp_path):
    """The passthrough export (output projections scaled by 1/running product) built by
    mergekit-yaml and by `evomerge merge` gives the path model's logits within 1e-4."""
    MERGEKIT_YAML = mergekit_cli("mergekit-yaml")
    from evomerge.engine.merge import merge_to_disk
    from evomerge.engine.recipe import load_recipe

    mat = Materializer([pair["a"], pair["b"]], device="cpu")
    want = logits(mat.path_model(steps(pair)), IDS)
    recipe = tmp_path / "path.yaml"
    recipe.write_text(path_recipe(steps(pair), dtype="float32").to_yaml())
    subprocess.run([MERGEKIT_YAML, str(recipe), str(tmp_path / "mk"), "--no-write-model-card",
                    "--no-copy-tokenizer"], check=True, capture_output=True)
    merge_to_disk(load_recipe(recipe), tmp_path / "ev")
    for out in ("mk", "ev"):
        cfg = json.loads((tmp_path / out / "config.json").read_text())
        assert cfg["num_hidden_layers"] == len(PATH)
        built = LlamaForCausalLM.from_pretrained(tmp_path / out).eval()
        diff = (logits(built, IDS) - want).abs().max().item()
        print(f"{out}: max |logit diff| {diff:.2e}")
        assert diff < 1e-4, (out, diff)
    # without the scales the export is a different model: the check above can fail
    plain = path_recipe([Step(s.model, s.layer) for s in steps(pair)], dtype="float32")
    merge_to_disk(plain, tmp_path / "plain")
    other = LlamaForCausalLM.from_pretrained(tmp_path / "plain").eval()
    assert (logits(other, IDS) - want).abs().max().item() > 1e-2


def test_greedy_generation_with_the_cache_equals_without(pair):
    """Generative evaluators decode with the KV cache: the same tokens as recomputing every
    step, on a path with a repeated layer."""
    model = Materializer([pair["a"], pair["b"]], device="cpu").path_model(steps(pair))
    kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(IDS[:, :5], use_cache=True, **kw)
        plain = model.generate(IDS[:, :5], use_cache=False, **kw)
    assert cached.shape == (1, 13) and torch.equal(cached, plain)


def test_smollm2_path_runs_the_real_model_and_its_export(smollm2, tmp_path):
    """SmolLM2-135M in bf16 (GQA, tied embeddings): its identity path is the model itself, bit
    for bit; a path over both experts with a repeated layer and scales, exported and built by
    `evomerge merge` in float32, agrees with the path model computed in float32."""
    from evomerge.engine.merge import merge_to_disk

    ids = torch.tensor([[1, 504, 3458, 314, 260, 2689, 30, 198, 1350, 2]])
    mat = Materializer([smollm2["a"], smollm2["b"]], device="cpu")
    depth = mat.sources[smollm2["a"]].num_layers
    same = mat.path_model([Step(smollm2["a"], i) for i in range(depth)])
    whole = LlamaForCausalLM.from_pretrained(smollm2["a"], dtype=torch.bfloat16).eval()
    assert torch.equal(logits(same, ids), logits(whole, ids))

    path = [Step(smollm2["a"], i) for i in range(20)] + [
        Step(smollm2["b"], 18, 1.2), Step(smollm2["b"], 19, 0.9),
        *(Step(smollm2["a"], i) for i in range(18, depth))]
    recipe = path_recipe(path, dtype="float32", out_dtype="float32")
    merge_to_disk(recipe, tmp_path / "built")
    built = LlamaForCausalLM.from_pretrained(tmp_path / "built", dtype=torch.float32).eval()
    assert built.config.num_hidden_layers == len(path) == depth + 4
    fp32 = Materializer([smollm2["a"], smollm2["b"]], device="cpu", dtype=torch.float32)
    fp32._weights = {k: {n: t.float() for n, t in w.items()} for k, w in fp32._weights.items()}
    want = logits(fp32.path_model(path), ids)
    diff = (logits(built, ids) - want).abs().max().item()
    print(f"smollm2 path vs export: max |logit diff| {diff:.2e}")
    assert diff < 1e-3
