"""Generative scoring through the ``answers`` evaluator: lm-eval's own ``generate_until``
exact match on a local task equals ours (SmolLM2-135M-Instruct, fp32), and on the zoo the
generations' exact match equals the teacher-forced greedy match it must equal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import ConfigError
from evomerge.evaluators import make_evaluator

QUESTIONS = [(12, 30), (7, 8), (25, 25), (3, 4)]


def local_task(root, name: str) -> str:
    """A GSM8K-shaped local generate_until task: strict "#### N" and flexible last-number
    filters, GSM8K's exact-match options, stop strings and a small budget."""
    rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in QUESTIONS]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n\n", "Question:"], "max_gen_toks": 10,
                              "do_sample": False},
        "filter_list": [
            {"name": "strict-match", "filter": [
                {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "group_select": -1,
                 "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False,
                         "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
    }
    (root / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(root)


@pytest.mark.slow
def test_exact_match_equals_lm_eval_generate_until(smollm2, tmp_path):
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    include = local_task(tmp_path, "local_sums")
    tok = AutoTokenizer.from_pretrained(smollm2["base"])
    model = AutoModelForCausalLM.from_pretrained(smollm2["base"], dtype=torch.float32).eval()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    tasks = TaskManager(include_path=include, include_defaults=False).load(["local_sums"])
    res = evaluate(lm=lm, task_dict=tasks, bootstrap_iters=0, log_samples=True,
                   verbosity="ERROR")
    theirs = res["results"]["local_sums"]
    samples = sorted(res["samples"]["local_sums"], key=lambda s: (s["doc_id"], s["filter"]))

    ev = make_evaluator("answers", lm_eval_tasks=["local_sums"], include_path=include,
                        generate=True, teacher_forced=False, gen_batch_size=3)
    names = [m.name for m in ev.metrics]
    assert names == ["local_sums/exact_match,strict-match",
                     "local_sums/exact_match,flexible-extract", "local_sums/truncated",
                     "local_sums/gen_tokens"]
    scores, _, stats = ev.score(model, tok, per_example=True)
    for f in ("strict-match", "flexible-extract"):
        assert scores[f"local_sums/exact_match,{f}"] == theirs[f"exact_match,{f}"]
        per_doc = [s["exact_match"] for s in samples if s["filter"] == f]
        assert stats[f"local_sums/exact_match,{f}"][0] == per_doc
    flexible = stats["local_sums/exact_match,flexible-extract"][0]
    assert 0 < sum(flexible) < len(QUESTIONS)  # both outcomes occur: the comparison bites
    assert 0 <= scores["local_sums/truncated"] <= 1 and scores["local_sums/gen_tokens"] > 0


def test_zoo_generations_match_teacher_forced_greedy(mini_zoo, tmp_path):
    """Greedy decoding follows the teacher-forced path as long as it is right, so the
    generations' exact match equals the teacher-forced greedy match (answer + newline all
    argmax, EOS for the newline counting); half the answers are the model's own greedy
    output, so both outcomes occur. Subsets score the same examples' generations."""
    from evomerge.zoo.data import read_jsonl

    path = mini_zoo / "math"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    rows = read_jsonl(mini_zoo / "tasks" / "add_l1" / "validation.jsonl")[:30]
    out = []
    for i, ex in enumerate(rows):
        answer = ex.answer
        if i % 2:
            ids = tok(ex.prompt, return_tensors="pt").input_ids
            g = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
            answer = tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        out.append({"prompt": ex.prompt, "answer": answer})
    data = tmp_path / "add.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in out))
    files = {"add": str(data)}
    tf = make_evaluator("answers", files=files, terminator="\n", eos_ends_answer=True)
    gen = make_evaluator("answers", files=files, generate=True, teacher_forced=False,
                         stop=["\n"], max_new_tokens=12, gen_batch_size=8)
    assert [m.name for m in gen.metrics] == ["add/exact_match", "add/truncated",
                                            "add/gen_tokens"]
    want, got = tf(model, tok), gen(model, tok)
    assert got["add/exact_match"] == want["add/greedy_match"]
    assert 0 < got["add/exact_match"] < 1 and got["add/truncated"] == 0.0
    idx = np.array([3, 17, 5, 20])
    _, _, full = gen.score(model, tok, per_example=True)
    sub, _, part = gen.score(model, tok, {"add": (idx, None)}, per_example=True)
    assert part["add/exact_match"][0] == [full["add/exact_match"][0][i] for i in idx]
    assert sub["add/exact_match"] == np.mean(part["add/exact_match"][0])


def test_generative_options_are_checked(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    with pytest.raises(ConfigError, match="scores nothing with teacher_forced false"):
        make_evaluator("answers", files={"t": str(path)}, teacher_forced=False)
    with pytest.raises(ConfigError, match="decode_backend 'vlm' is not one of auto, loop"):
        make_evaluator("answers", files={"t": str(path)}, generate=True, decode_backend="vlm")
    with pytest.raises(ConfigError, match="'vllm' options apply to decode_backend 'vllm' only"):
        make_evaluator("answers", files={"t": str(path)}, generate=True,
                       vllm={"max_model_len": 512})
    with pytest.raises(ConfigError, match="extract preset 'gsm'"):
        make_evaluator("answers", files={"t": str(path)}, generate=True, extract="gsm")
    ev = make_evaluator("answers", files={"t": str(path)}, generate=True, extract="gsm8k")
    assert [m.name for m in ev.metrics][-4:] == ["t/exact_match", "t/no_answer", "t/truncated",
                                                 "t/gen_tokens"]
