"""`evomerge eval`: the zoo scorer, lm-eval with local task YAMLs beside its built-in index,
lm-eval options as users pass them (few-shot, filters, generation kwargs), and --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evomerge.cli import main
from evomerge.evaluators import make_evaluator
from evomerge.zoo.data import read_jsonl


def _local_task(root: Path, zoo: Path, name: str, shots: int) -> Path:
    """A GSM8K-shaped generative task (few-shot from a train split, regex-filtered exact
    match: a strict and a flexible filter) over the zoo's L1 addition, as local JSONL."""
    root.mkdir(parents=True, exist_ok=True)
    data = {"train": str(zoo / "tasks" / "add_l1" / "validation.jsonl"),
            "test": str(zoo / "tasks" / "add_l1" / "test.jsonl")}
    doc = {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": data},
        "training_split": "train", "fewshot_split": "train", "test_split": "test",
        "num_fewshot": shots, "output_type": "generate_until",
        "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
        "target_delimiter": "", "fewshot_delimiter": "\n",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
        "filter_list": [
            {"name": "strict-match", "filter": [
                {"function": "regex", "regex_pattern": "^([0-9]+)$"},
                {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "group_select": -1, "regex_pattern": "([0-9]+)"},
                {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                         "higher_is_better": True}],
    }
    (root / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def test_zoo_eval_writes_json(mini_zoo, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["eval", str(mini_zoo / "math"), "--tasks", "add_l1,maxmin_l2", "--zoo",
                 str(mini_zoo), "--limit", "20", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    direct = make_evaluator("zoo", tasks=["add_l1", "maxmin_l2"], zoo=str(mini_zoo),
                            split="test", limit=20)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(mini_zoo / "math").eval()
    expected = direct(model, AutoTokenizer.from_pretrained(mini_zoo / "math"))
    assert doc == {t: {m: expected[f"{t}/{m}"] for m in ("exact_match", "token_acc",
                                                          "answer_nll")}
                   for t in ("add_l1", "maxmin_l2")}
    assert "add_l1" in capsys.readouterr().out


def test_eval_without_a_zoo_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(tmp_path), "--tasks", "add_l1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evomerge: error: No zoo at 'zoo'") and "\n" not in err


@pytest.mark.slow
def test_local_generative_task_with_filters_and_few_shot(mini_zoo, tmp_path, capsys):
    """A local copy of a real generative task config, run offline through the CLI with
    lm-eval's built-in index on; the options users pass reach lm-eval."""
    include = _local_task(tmp_path / "tasks", mini_zoo, "local_add", shots=2)
    out = tmp_path / "s.json"
    assert main(["eval", str(mini_zoo / "math"), "--evaluator", "lm_eval", "--tasks",
                 "local_add", "--include", str(include), "--limit", "30",
                 "--json", str(out)]) == 0
    two = json.loads(out.read_text())["local_add"]
    assert set(two) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    # a flexible extraction finds every number the strict one finds, and maybe more
    assert two["exact_match,flexible-extract"] >= two["exact_match,strict-match"]
    assert all(v * 30 == round(v * 30) for v in two.values())

    # zero shots (the option overrides the YAML's 2): the greedy answer up to the newline,
    # strictly digits, equals the fast scorer's exact match on the same 30 examples
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(mini_zoo / "math").eval()
    tok = AutoTokenizer.from_pretrained(mini_zoo / "math")
    ev = make_evaluator("lm_eval", tasks=["local_add"], include_path=str(include),
                        include_defaults=False, limit=30, num_fewshot=0,
                        metrics=["exact_match,strict-match"],
                        gen_kwargs={"max_gen_toks": 6})
    zero = ev(model, tok)
    zoo = make_evaluator("zoo", tasks=["add_l1"], zoo=str(mini_zoo), split="test", limit=30)
    assert list(zero) == ["local_add/exact_match,strict-match"]
    assert zero["local_add/exact_match,strict-match"] == zoo(model, tok)["add_l1/exact_match"]
    assert max(len(ex.answer) for ex in read_jsonl(
        mini_zoo / "tasks" / "add_l1" / "test.jsonl")[:30]) <= 6  # room for every answer


def test_multiturn_few_shot_needs_the_chat_template(mini_zoo, tmp_path):
    from evomerge.errors import ConfigError

    include = _local_task(tmp_path / "tasks", mini_zoo, "local_add2", shots=1)
    with pytest.raises(ConfigError, match="fewshot_as_multiturn needs apply_chat_template"):
        make_evaluator("lm_eval", tasks=["local_add2"], include_path=str(include),
                       include_defaults=False, fewshot_as_multiturn=True)
