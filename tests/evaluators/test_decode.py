"""Batched decoding (evomerge.evaluators.decode): greedy outputs equal transformers'
``generate`` token for token -- on tiny Llamas (padding, batches cut by the token budget,
finished rows dropped), on data-flow path models (a KV-cache index per slot) and on
SmolLM2-135M-Instruct in fp32 -- and seeded sampling draws what it should, whatever the batch."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.engine.materialize import Materializer
from evomerge.engine.paths import Step
from evomerge.evaluators.decode import DecodeOptions, batches, choose_tokens, generate

PROMPTS = [[3, 9, 14, 2], [7], [11, 12, 13, 14, 15, 16, 17], [5, 5], [40, 1, 22], [8, 30, 2, 9, 1]]


def reference(model, prompts, n, eos=None):
    """``generate`` one prompt at a time (no padding): the greedy tokens, EOS cut off."""
    out = []
    for p in prompts:
        with torch.no_grad():
            ids = model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False,
                                 pad_token_id=0, eos_token_id=eos)
        g = ids[0, len(p):].tolist()
        out.append(g[:g.index(eos)] if eos is not None and eos in g else g)
    return out


@pytest.fixture(scope="module")
def tiny_lm(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["a"]).eval()
    model.generation_config.eos_token_id = None
    return model, AutoTokenizer.from_pretrained(tiny["a"])


def test_batches_sort_longest_first_within_the_budget():
    lengths = [len(p) for p in PROMPTS]
    got = batches(lengths, DecodeOptions(max_new_tokens=3, batch_size=3, token_budget=20))
    assert sorted(i for b in got for i in b) == list(range(len(PROMPTS)))
    flat = [i for b in got for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for b in got:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * (lengths[b[0]] + 3) <= 20)
    assert batches([500], DecodeOptions(token_budget=10)) == [[0]]  # one row always fits


@pytest.mark.parametrize("backend", ["loop", "hf", "hf_static"])
@pytest.mark.parametrize("budget", [10_000, 24])
def test_greedy_equals_generate(tiny_lm, backend, budget):
    model, tok = tiny_lm
    opts = DecodeOptions(max_new_tokens=9, batch_size=4, token_budget=budget, backend=backend)
    got = generate(model, tok, PROMPTS, opts)
    assert [list(g.tokens) for g in got] == reference(model, PROMPTS, 9)
    assert {g.finish for g in got} == {"length"}


def test_eos_and_stop_strings_end_rows_early(tiny_lm):
    """Rows end at EOS or at a stop string (cut out of the text), the others go on; the
    loop drops finished rows from the batch and the cache, and the rest are unchanged."""
    model, tok = tiny_lm
    full = reference(model, PROMPTS, 12)
    eos = full[0][2]  # a token the first prompt generates third: EOS for this test
    model.generation_config.eos_token_id = eos
    try:
        want = reference(model, PROMPTS, 12, eos=eos)
        for backend in ("loop", "hf"):
            got = generate(model, tok, PROMPTS, DecodeOptions(max_new_tokens=12, batch_size=6,
                                                              backend=backend))
            assert [list(g.tokens) for g in got] == want
            assert got[0].finish == "eos" and got[0].tokens == tuple(full[0][:2])
    finally:
        model.generation_config.eos_token_id = None
    stop = tok.decode([full[2][4]])
    got = generate(model, tok, PROMPTS, DecodeOptions(max_new_tokens=12, stop=(stop,)))
    for g, f in zip(got, full):
        text = tok.decode(f, skip_special_tokens=True)
        if stop in text:
            assert g.finish == "stop" and g.text == text.split(stop)[0]
            assert list(g.tokens) == f[:len(g.tokens)] and len(g.tokens) < 12
        else:
            assert g.finish == "length" and g.text == text


def test_path_model_decodes_like_generate(tiny):
    """A data-flow path with a repeated layer: each slot has its own cache index."""
    mat = Materializer([tiny["a"], tiny["b"]], device="cpu")
    path = [Step(tiny["a"], 0, 1.0), Step(tiny["b"], 1, 0.9), Step(tiny["a"], 1, 1.2),
            Step(tiny["a"], 1, 1.0), Step(tiny["b"], 3, 1.1)]
    model = mat.path_model(path)
    model.generation_config.eos_token_id = None
    tok = AutoTokenizer.from_pretrained(tiny["a"])
    got = generate(model, tok, PROMPTS, DecodeOptions(max_new_tokens=8, batch_size=3))
    assert [list(g.tokens) for g in got] == reference(model, PROMPTS, 8)


def test_sampling_draws_softmax_and_ignores_the_batch(tiny_lm):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20_000, 1)
    keys = torch.arange(20_000)
    opts = DecodeOptions(do_sample=True, seed=3)
    freq = torch.bincount(choose_tokens(logits, keys, 0, opts), minlength=4) / 20_000
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.012), freq
    hot = torch.bincount(choose_tokens(logits, keys, 0, DecodeOptions(
        do_sample=True, seed=3, temperature=0.5)), minlength=4) / 20_000
    assert torch.allclose(hot, (logits[0] / 0.5).softmax(-1), atol=0.012), hot
    assert set(choose_tokens(logits, keys, 1, DecodeOptions(do_sample=True, top_k=2)).tolist()) \
        == {0, 1}
    assert set(choose_tokens(logits, keys, 1, DecodeOptions(do_sample=True, top_p=0.8)).tolist()) \
        == {0, 1}  # p = .64, .24: the smallest set reaching 0.8
    model, tok = tiny_lm
    base = DecodeOptions(max_new_tokens=8, do_sample=True, seed=7, temperature=2.0)
    one = generate(model, tok, PROMPTS, base)
    for backend, size in (("loop", 1), ("loop", 4), ("hf", 2)):
        again = generate(model, tok, PROMPTS, DecodeOptions(
            max_new_tokens=8, do_sample=True, seed=7, temperature=2.0, batch_size=size,
            backend=backend))
        assert again == one  # same draws whatever the batch, its order and the backend
    other = generate(model, tok, PROMPTS, DecodeOptions(max_new_tokens=8, do_sample=True,
                                                         seed=8, temperature=2.0))
    assert other != one
    greedy = generate(model, tok, PROMPTS, DecodeOptions(max_new_tokens=8))
    assert one != greedy
    cold = generate(model, tok, PROMPTS, DecodeOptions(max_new_tokens=8, do_sample=True,
                                                        top_k=1))
    assert [g.tokens for g in cold] == [g.tokens for g in greedy]


@pytest.mark.slow
def test_greedy_equals_generate_on_smollm2_fp32(smollm2):
    """SmolLM2-135M-Instruct in fp32 with its chat template: prompts of different lengths,
    two batches, answers that end at EOS and answers cut by the budget."""
    tok = AutoTokenizer.from_pretrained(smollm2["base"])
    model = AutoModelForCausalLM.from_pretrained(smollm2["base"], dtype=torch.float32).eval()
    questions = ["What is the capital of France?", "What is 12 + 30?",
                 "Write a haiku about the sea.", "Say hello in Spanish."]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}],
                                                  add_generation_prompt=True, tokenize=False))
               for q in questions]
    got = generate(model, tok, prompts, DecodeOptions(max_new_tokens=12, batch_size=3,
                                                      backend="loop"))
    eos = model.generation_config.eos_token_id
    assert [list(g.tokens) for g in got] == reference(model, prompts, 12, eos=eos)
    assert got[0].text == "The capital of France is Paris." and got[0].finish == "eos"
    assert "length" in {g.finish for g in got}
