"""Every evaluator on a tiny model; lm-eval agrees with the fast scorer on the same examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import ConfigError, UnknownNameError
from evomerge.evaluators import EVALUATORS, make_evaluator
from evomerge.zoo.build import write_lm_eval_yamls
from evomerge.zoo.data import encode, read_jsonl


@pytest.fixture(scope="module")
def math_model(mini_zoo):
    path = mini_zoo / "math"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_registry():
    assert {"zoo", "lm_eval", "perplexity", "callable"} <= set(EVALUATORS.names())
    with pytest.raises(UnknownNameError, match="Unknown evaluator 'lmeval'. Available: "):
        make_evaluator("lmeval")


def test_zoo_scores_have_directions_and_ranges(mini_zoo, math_model):
    ev = make_evaluator("zoo", tasks=["add_l1", "add_l2"], zoo=str(mini_zoo), limit=20)
    scores = ev(*math_model)
    assert set(scores) == {m.name for m in ev.metrics} and len(scores) == 6
    assert ev.direction("add_l1/answer_nll") == "minimize"
    assert ev.direction("add_l1/exact_match") == "maximize"
    for task in ("add_l1", "add_l2"):  # fractions of 20 examples; a likelihood below 1
        assert scores[f"{task}/exact_match"] * 20 == round(scores[f"{task}/exact_match"] * 20)
        assert scores[f"{task}/answer_nll"] > 0
        assert 0 < scores[f"{task}/token_acc"] < 1  # a partly trained model: some, not all
    assert scores == ev(*math_model)  # deterministic, batches reused


def test_zoo_exact_match_equals_greedy_generation(mini_zoo, math_model):
    model, tok = math_model
    examples = read_jsonl(mini_zoo / "tasks" / "maxmin_l2" / "validation.jsonl")[:25]
    ev = make_evaluator("zoo", tasks=["maxmin_l2"], zoo=str(mini_zoo), limit=25, batch_size=7)
    hits = 0
    for ex in examples:
        ids = tok(ex.prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0,
                             eos_token_id=[tok.convert_tokens_to_ids("\n"), tok.eos_token_id])
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        hits += text == ex.answer
    assert ev(model, tok)["maxmin_l2/exact_match"] == hits / len(examples)


def test_answer_nll_by_hand(mini_zoo, math_model):
    model, tok = math_model
    ex = read_jsonl(mini_zoo / "tasks" / "add_l1" / "validation.jsonl")[:1]
    ev = make_evaluator("zoo", tasks=["add_l1"], zoo=str(mini_zoo), limit=1)
    ids, labels, mask = encode(ex)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    pos = (labels[0] != -100).nonzero().flatten()
    expected = -logp[pos, labels[0, pos]].mean().item()
    assert math.isclose(ev(model, tok)["add_l1/answer_nll"], expected, rel_tol=1e-5)


@torch.no_grad()
def _reference_zoo_scores(model, examples):
    """The zoo's scores computed the direct way: one padded batch with an attention mask,
    the full (B, T, V) log-softmax, the EOS accepted where the terminating newline is due."""
    from evomerge.zoo.model import vocab

    ids, labels, mask = encode(examples)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    answer = labels != -100
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    pred = logits.argmax(-1)
    right = ((pred == labels) | ((labels == vocab()["\n"]) & (pred == vocab()["<eos>"])))
    right &= answer
    n_tok = answer.sum().item()
    return {"exact_match": (right.sum(1) == answer.sum(1)).sum().item() / len(examples),
            "token_acc": right.sum().item() / n_tok,
            "answer_nll": -(logp * answer).sum().item() / n_tok}


@pytest.mark.parametrize("task", ["add_l1", "maxmin_l2", "add_l2"])
def test_zoo_scorer_is_the_answers_scorer_with_identical_numbers(mini_zoo, math_model, task):
    """The zoo evaluator is the answers evaluator on zoo data: the same fractions exactly,
    the same NLL to float32 rounding, whatever the batching; and the same scores through a
    subset of all examples with unit weights."""
    model, tok = math_model
    examples = read_jsonl(mini_zoo / "tasks" / task / "validation.jsonl")[:60]
    expected = _reference_zoo_scores(model, examples)
    for batch in (7, 256):
        ev = make_evaluator("zoo", tasks=[task], zoo=str(mini_zoo), limit=60, batch_size=batch)
        got = ev(model, tok)
        assert got[f"{task}/exact_match"] == expected["exact_match"]
        assert got[f"{task}/token_acc"] == pytest.approx(expected["token_acc"], abs=1e-12)
        assert got[f"{task}/answer_nll"] == pytest.approx(expected["answer_nll"], rel=1e-6)
    assert 0 < expected["token_acc"] < 1
    n = len(examples)
    subset, *_ = ev.score(model, tok, {task: (list(range(n - 1, -1, -1)), [1.0] * n)})
    assert subset[f"{task}/exact_match"] == got[f"{task}/exact_match"]
    assert subset[f"{task}/answer_nll"] == pytest.approx(got[f"{task}/answer_nll"], rel=1e-9)


def test_subset_scores_are_weighted_ratios(mini_zoo, math_model):
    """A weighted subset's score is sum(w num) / sum(w den) of the per-example stats."""
    model, tok = math_model
    ev = make_evaluator("zoo", tasks=["add_l1"], zoo=str(mini_zoo), limit=30)
    full, totals, stats = ev.score(model, tok, per_example=True)
    num, den = (np.asarray(v) for v in stats["add_l1/answer_nll"])
    assert full["add_l1/answer_nll"] == pytest.approx(num.sum() / den.sum(), rel=1e-12)
    assert totals["add_l1/answer_nll"] == pytest.approx([num.sum(), den.sum()], rel=1e-12)
    idx, w = [3, 10, 11], [2.0, 5.0, 1.0]
    part, *_ = ev.score(model, tok, {"add_l1": (idx, w)})
    assert part["add_l1/answer_nll"] == pytest.approx(
        np.dot(w, num[idx]) / np.dot(w, den[idx]), rel=1e-12)
    hits = np.asarray(stats["add_l1/exact_match"][0])
    assert part["add_l1/exact_match"] == pytest.approx(np.dot(w, hits[idx]) / 8.0, abs=1e-15)


def test_answers_scores_lm_eval_task_documents_like_lm_eval(mini_zoo, math_model, tmp_path):
    """The fast scorer reads lm-eval tasks' documents (a loglikelihood task and a local
    multiple-choice task) and its greedy match / choice accuracy equal lm-eval's ``acc``."""
    import yaml

    examples = read_jsonl(mini_zoo / "tasks" / "add_l1" / "validation.jsonl")[:12]
    def near(answer, k):  # a distractor: the last digit moved by k
        return answer[:-1] + str((int(answer[-1]) + k) % 10) if answer[-1].isdigit() \
            else answer + str(k)

    rows = [{"prompt": ex.prompt, "choices": [near(ex.answer, 1), ex.answer, near(ex.answer, 5)],
             "label": 1} for ex in examples]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mc_t.yaml").write_text(yaml.safe_dump({
        "task": "mc_t", "dataset_path": "json", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"validation": str(tmp_path / "mc.jsonl")}},
        "validation_split": "validation", "doc_to_text": "{{prompt}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}", "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    include = [str(write_lm_eval_yamls(mini_zoo)), str(tmp_path)]
    tasks = ["mc_t", "zoo_add_l1_validation"]
    theirs = make_evaluator("lm_eval", tasks=tasks, include_path=include, limit=12)(*math_model)
    ev = make_evaluator("answers", lm_eval_tasks=tasks, include_path=include, limit=12)
    ours = ev(*math_model)
    assert ours["mc_t/choice_acc"] == theirs["mc_t/acc"]
    assert ours["zoo_add_l1_validation/greedy_match"] == theirs["zoo_add_l1_validation/acc"]
    assert 0 < ours["mc_t/choice_acc"] < 1  # some right, some wrong: the comparison bites
    with pytest.raises(ConfigError, match="lm-eval task 'mc_t' has no test split"):
        make_evaluator("answers", lm_eval_tasks=["mc_t"], include_path=include, split="test")


def test_malformed_task_line_names_file_and_line(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="\n')
    with pytest.raises(ConfigError, match=r"t\.jsonl:2: malformed line"):
        make_evaluator("zoo", tasks=["t"], files={"t": str(bad)})
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"question": "x"}\n')
    with pytest.raises(ConfigError, match=r"t\.jsonl:2: malformed line \(KeyError"):
        make_evaluator("zoo", tasks=["t"], files={"t": str(bad)})


@pytest.mark.slow
def test_lm_eval_generation_agrees_with_fast_scorer(mini_zoo, math_model):
    include = str(write_lm_eval_yamls(mini_zoo))
    tasks = ["zoo_maxmin_l2_gen_validation", "zoo_add_l1_gen_validation"]
    harness = make_evaluator("lm_eval", tasks=tasks, include_path=include, limit=40, batch_size=8)
    fast = make_evaluator("zoo", tasks=["maxmin_l2", "add_l1"], zoo=str(mini_zoo), limit=40)
    got, expected = harness(*math_model), fast(*math_model)
    assert got["zoo_maxmin_l2_gen_validation/exact_match"] == expected["maxmin_l2/exact_match"]
    assert got["zoo_add_l1_gen_validation/exact_match"] == expected["add_l1/exact_match"]
    assert harness(*math_model) == got  # task objects and HFLM reused across calls


@pytest.mark.slow
def test_lm_eval_loglikelihood_task_runs(mini_zoo, math_model):
    include = str(write_lm_eval_yamls(mini_zoo))
    ev = make_evaluator("lm_eval", tasks=["zoo_add_l1_test"], include_path=include, limit=10)
    assert [m.name for m in ev.metrics] == ["zoo_add_l1_test/acc"]
    acc = ev(*math_model)["zoo_add_l1_test/acc"]
    # lm-eval's acc on one target is "the answer (with its newline) is the greedy path": the
    # fast scorer's exact match on the same 10 test examples
    zoo = make_evaluator("zoo", tasks=["add_l1"], zoo=str(mini_zoo), limit=10, split="test")
    assert acc == zoo(*math_model)["add_l1/exact_match"]
    with pytest.raises(ConfigError, match="Unknown lm-eval task 'zoo_nope'"):
        make_evaluator("lm_eval", tasks=["zoo_nope"], include_path=include)


def test_perplexity_txt_and_jsonl(tmp_path, math_model):
    (tmp_path / "a.txt").write_text("12+34=46\n5+5=10\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "12+34=46"}) + "\n"
                                      + json.dumps({"text": "5+5=10"}) + "\n")
    p1 = make_evaluator("perplexity", path=str(tmp_path / "a.txt"))(*math_model)
    p2 = make_evaluator("perplexity", path=str(tmp_path / "a.jsonl"))(*math_model)
    assert p1["a/perplexity"] == p2["a/perplexity"] > 1
    (tmp_path / "b.jsonl").write_text('{"text": "1"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"b\.jsonl:2: malformed line"):
        make_evaluator("perplexity", path=str(tmp_path / "b.jsonl"))


def test_callable(tmp_path, math_model):
    (tmp_path / "myeval.py").write_text(
        "def score(model, tokenizer, bonus=0):\n"
        "    return {'params': sum(p.numel() for p in model.parameters()) + bonus}\n")
    ev = make_evaluator("callable", function=f"{tmp_path}/myeval.py:score",
                        metrics={"params": "minimize"}, kwargs={"bonus": 1})
    n = sum(p.numel() for p in math_model[0].parameters())
    assert ev(*math_model) == {"params": n + 1}
    assert ev.direction("params") == "minimize"
    with pytest.raises(ConfigError, match="has no callable 'nope'"):
        make_evaluator("callable", function=f"{tmp_path}/myeval.py:nope", metrics={"x": "maximize"})
    with pytest.raises(ConfigError, match="must look like 'module:function'"):
        make_evaluator("callable", function="nocolon", metrics={"x": "maximize"})


@pytest.mark.slow
def test_lm_eval_reused_requests_score_like_a_fresh_harness(mini_zoo, math_model):
    """Requests and encodings are built once and reused across models: every call must match
    a newly built evaluator's, and no response may leak from one model into the next."""
    include = str(write_lm_eval_yamls(mini_zoo))
    tasks = ["zoo_maxmin_l2_validation", "zoo_maxmin_l2_gen_validation"]

    def fresh():
        return make_evaluator("lm_eval", tasks=tasks, include_path=include, limit=24, batch_size=8)

    base = (AutoModelForCausalLM.from_pretrained(mini_zoo / "lang").eval(),
            AutoTokenizer.from_pretrained(mini_zoo / "lang"))
    reused = fresh()
    seq = [math_model, base, math_model, base]
    got, loglik = [], []
    for m in seq:
        got.append(reused(*m))
        task = dict(reused._tasks())["zoo_maxmin_l2_validation"]
        assert all(len(inst.resps) == 1 for inst in task.instances)  # this model's only
        loglik.append([inst.resps[0][0] for inst in task.instances])
    assert got == [fresh()(*m) for m in seq]
    assert loglik[0] == loglik[2] and loglik[1] == loglik[3] and loglik[0] != loglik[1]


def test_lm_eval_offset_and_shuffle_choose_documents(mini_zoo, math_model):
    """``offset`` / ``limit`` windows of one (seeded) document order: the search's and the
    report's documents are disjoint, and every call reads the same ones."""
    import json

    include = str(write_lm_eval_yamls(mini_zoo))
    task = "zoo_add_l1_validation"
    lines = (mini_zoo / "tasks" / "add_l1" / "validation.jsonl").read_text().splitlines()
    index = {json.loads(line)["prompt"]: i for i, line in enumerate(lines)}

    def docs(**opts):  # the line numbers of the documents scored
        ev = make_evaluator("lm_eval", tasks=[task], include_path=include, batch_size=8, **opts)
        ev(*math_model)
        first = {index[inst.doc["prompt"]] for inst in dict(ev._tasks())[task].instances}
        ev(*math_model)
        assert {index[inst.doc["prompt"]] for inst in dict(ev._tasks())[task].instances} == first
        return first

    assert docs(limit=5) == {0, 1, 2, 3, 4}
    assert docs(offset=35) == {35, 36, 37, 38, 39}  # the mini zoo has 40 per split
    search = docs(shuffle=True, shuffle_seed=3, limit=20)
    held_out = docs(shuffle=True, shuffle_seed=3, offset=20)
    assert len(search) == len(held_out) == 20 and not search & held_out
    assert search != set(range(20)) and docs(shuffle=True, shuffle_seed=4, limit=20) != search
    with pytest.raises(ConfigError, match="offset 40 leaves no document"):
        make_evaluator("lm_eval", tasks=[task], include_path=include, offset=40)


@pytest.mark.parametrize("kind, options, words", [
    ("lm_eval", {"gen_kwargs": {"custom_generate": "/tmp/evilgen", "trust_remote_code": True}},
     "gen_kwargs.custom_generate is not a generation setting"),
    ("lm_eval", {"gen_kwargs": {"until": [{"x": 1}]}}, "gen_kwargs.until = "),
    ("answers", {"vllm": {"trust_remote_code": True}}, "vllm.trust_remote_code is not an "
     "engine setting"),
    ("answers", {"vllm": {"download_dir": "/tmp/x"}}, "vllm.download_dir is not"),
    ("answers", {"vllm": {"gpu_memory_utilization": 7}}, "vllm.gpu_memory_utilization = 7 is "
     "not a number from 0.01 to 1."),
], ids=["custom-generate", "until-dict", "vllm-remote-code", "vllm-download-dir",
        "vllm-memory"])
def test_settings_passed_to_third_party_code_are_allowlisted(mini_zoo, kind, options, words):
    """A space is data: lm-eval's generation settings reach ``model.generate``, whose
    ``custom_generate`` with ``trust_remote_code`` imports a directory's code (a probe ran
    it), and vLLM's settings include ``trust_remote_code`` and ``download_dir``."""
    if kind == "lm_eval":
        common = {"tasks": ["zoo_add_l1_gen_validation"],
                  "include_path": str(write_lm_eval_yamls(mini_zoo))}
    else:
        common = {"files": {"t": str(mini_zoo / "tasks" / "add_l1" / "validation.jsonl")},
                  "generate": True, "decode_backend": "vllm"}
    with pytest.raises(ConfigError, match="") as err:
        make_evaluator(kind, **common, **options)
    assert words in str(err.value), err.value
