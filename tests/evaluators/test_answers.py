"""The fast scorer on a real pretrained model (SmolLM2-135M-Instruct, BPE tokenizer, chat
template): its log-likelihoods equal lm-eval's ``loglikelihood`` on the same items."""

from __future__ import annotations

import json

import pytest

from evomerge.evaluators import make_evaluator
from evomerge.evaluators.answers import encode_pair, loglikelihoods

pytestmark = pytest.mark.slow

ITEMS = [
    ("The capital of France is", " Paris."),
    ("Question: What is 12 + 30?\nAnswer:", " 42"),
    ("Water boils at 100 degrees ", "Celsius at sea level."),
    ("def add(a, b):\n    return", " a + b"),
    ("Translate to French: cat =>", " chat"),
    ("The opposite of hot is", " cold"),
    ("1, 2, 3, 4,", " 5, 6"),
    ("Je m'appelle", " Marie et j'habite à Lyon."),
]


@pytest.fixture(scope="module")
def smol(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2["base"], dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(smollm2["base"])


def test_loglikelihoods_equal_lm_eval(smol):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = smol
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu")
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(c, a), idx=i)
            for i, (c, a) in enumerate(ITEMS)]
    theirs = lm.loglikelihood(reqs)
    ours = loglikelihoods(model, [encode_pair(tok, c, a) for c, a in ITEMS], batch_size=4)
    for (ll, greedy), (mine, my_greedy, _, n) in zip(theirs, ours):
        assert n >= 1 and abs(mine - ll) < 1e-4, (mine, ll)  # measured: within 8e-6
        assert my_greedy == greedy
    assert {g for _, g in theirs} == {True, False}  # both outcomes occur: the flag is tested


def test_metrics_and_generation(smol, tmp_path):
    """Choice accuracy and batched greedy exact match equal the same computed one example at
    a time (no batching, no padding); the first answer is what the model says, the second
    is not."""
    model, tok = smol
    path = tmp_path / "qa.jsonl"
    rows = [{"prompt": "What is the capital of France? Answer with one word.",
             "answer": "The capital of France is Paris", "choices": ["Paris", "Berlin", "Rome"]},
            {"prompt": "What color is the sky on a clear day? Answer with one word.",
             "answer": "Blue", "choices": ["Blue", "Green", "Red"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = make_evaluator("answers", files={"qa": str(path)}, chat_template=True, generate=True,
                        max_new_tokens=8, stop=["\n", "."], batch_size=2)
    assert [m.name for m in ev.metrics] == ["qa/answer_nll", "qa/token_acc", "qa/greedy_match",
                                            "qa/choice_acc", "qa/exact_match", "qa/truncated",
                                            "qa/gen_tokens"]
    scores = ev(model, tok)
    assert scores["qa/exact_match"] == 0.5
    right = 0
    for r in rows:
        prompt = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                         add_generation_prompt=True, tokenize=False)
        lls = [loglikelihoods(model, [encode_pair(tok, prompt, c, True)], 1)[0][0]
               for c in r["choices"]]
        # the template's closing newline stays in the prompt: the answer's tokens are its own
        assert encode_pair(tok, prompt, "Blue", True)[1] == tok.encode("Blue")
        assert encode_pair(tok, prompt, "Blue")[1] != tok.encode("Blue")
        right += r["choices"][lls.index(max(lls))] == r["answer"]
    assert scores["qa/choice_acc"] == right / 2
    assert scores == ev(model, tok)  # encodings reused, same numbers
