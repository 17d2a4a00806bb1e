"""Sources whose tokenizers differ: mergekit's tokenizer rules give the same tensors (fp32,
<= 1e-6) and the same tokenizer (token -> id map) as mergekit, on disk and in memory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from oracle import load_dir, max_abs_diff, mergekit_cli, mergekit_merge
from transformers import AutoTokenizer

from evomerge.engine.materialize import Materializer
from evomerge.engine.merge import merge_to_disk
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError, ModelError
from evomerge.evaluators import make_evaluator
from evomerge.scoring import load_model, score

# Every recipe names its base_model, and new tokens of the models besides the base come in one
# order: mergekit visits those models in the order of an unordered set (it varies between
# runs), evomerge in the recipe's order; the two agree only where the order cannot matter.
RECIPES = {
    "union_padded": """
merge_method: ties
base_model: BASE
models:
  - {model: CHAT, parameters: {weight: 0.6, density: 0.5}}
  - {model: CHAT2, parameters: {weight: 0.4, density: 0.7}}
  - {model: PADDED, parameters: {weight: 0.3, density: 0.7}}
dtype: float32
tokenizer: {source: union, pad_to_multiple_of: 64}
""",
    "union_linear_mean_rows": """
merge_method: linear
base_model: BASE
models:
  - {model: CHAT2, parameters: {weight: 0.6}}
  - {model: CHAT, parameters: {weight: 0.4}}
  - {model: BASE, parameters: {weight: 0.2}}
tokenizer_source: union
""",
    "union_plain_token": """
merge_method: task_arithmetic
base_model: BASE
models:
  - {model: PLAIN, parameters: {weight: 0.6}}
  - {model: PADDED, parameters: {weight: 0.4}}
tokenizer: {source: union, pad_to_multiple_of: 32}
""",
    "base": """
merge_method: task_arithmetic
base_model: BASE
models:
  - {model: CHAT2, parameters: {weight: 0.6}}
  - {model: PADDED, parameters: {weight: 0.4}}
tokenizer_source: base
""",
    "model_prefix": """
merge_method: task_arithmetic
base_model: BASE
models:
  - {model: CHAT2, parameters: {weight: 0.6}}
  - {model: CHAT, parameters: {weight: 0.4}}
tokenizer_source: model:CHAT2
""",
    "tokens_block": """
merge_method: ties
base_model: BASE
models:
  - {model: CHAT2, parameters: {weight: 0.6, density: 0.5}}
  - {model: CHAT, parameters: {weight: 0.4, density: 0.5}}
tokenizer:
  source: union
  pad_to_multiple_of: 8
  tokens:
    <|im_start|>: {source: CHAT2}
    <tool>: {source: {kind: model_token, model: CHAT, token: "<|im_end|>"}}
    w3: {source: {kind: zero}, force: true}
    <new>: {source: {kind: model_token, model: BASE, token_id: 5}}
""",
    "passthrough_layer_swap": """
merge_method: passthrough
base_model: BASE
slices:
  - sources: [{model: CHAT, layer_range: [0, 2]}]
  - sources: [{model: CHAT2, layer_range: [2, 4]}]
tokenizer_source: union
""",
    "tied": """
merge_method: linear
base_model: TBASE
models:
  - {model: TBASE, parameters: {weight: 0.5}}
  - {model: TCHAT, parameters: {weight: 0.5}}
tokenizer: {source: union, pad_to_multiple_of: 16}
""",
}


def _fill(text: str, paths: dict[str, str]) -> str:
    for key in sorted(paths, key=len, reverse=True):  # CHAT2 before CHAT
        text = text.replace(key.upper(), paths[key])
    return text


def _check_same_model(ours: Path, theirs: Path, expected: dict[str, torch.Tensor]) -> None:
    """Tensors, the token -> id map, the config's vocabulary size and the chat template."""
    assert max_abs_diff(load_dir(ours), expected) <= 1e-6
    a, b = (AutoTokenizer.from_pretrained(d) for d in (ours, theirs))
    assert a.get_vocab() == b.get_vocab()
    assert a.chat_template == b.chat_template
    assert a.all_special_tokens == b.all_special_tokens
    sizes = [json.loads((d / "config.json").read_text())["vocab_size"] for d in (ours, theirs)]
    assert sizes[0] == sizes[1] == expected["model.embed_tokens.weight"].shape[0]


def _in_memory(recipe, expected: dict[str, torch.Tensor], dtype=None, grouped=None,
               slot: int = 0) -> float:
    mat = Materializer(recipe.referenced_models(), base_model=recipe.base_model, dtype=dtype,
                       grouped=grouped)
    state = {k: v for k, v in mat.materialize(recipe, slot).state_dict().items()
             if k in expected}
    return max_abs_diff(state, expected)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_tokenizer_rules_match_mergekit(name, vocab_tiny, tmp_path):
    text = _fill(RECIPES[name], vocab_tiny)
    expected = mergekit_merge(text.replace("model:/", "/"), tmp_path / "mk")
    recipe = load_recipe(text)
    merge_to_disk(recipe, tmp_path / "ours")
    _check_same_model(tmp_path / "ours", tmp_path / "mk", expected)
    assert _in_memory(recipe, expected) <= 1e-6
    # grouped merges (the default on CUDA) beside the re-indexed token rows, and the second
    # output model (--overlap) built first: the same rows and tensors
    assert _in_memory(recipe, expected, grouped=True) <= 1e-6
    assert _in_memory(recipe, expected, grouped=True, slot=1) <= 1e-6


def test_rows_follow_the_rules(vocab_tiny, tmp_path):
    """By hand: a token only one model has takes its row, the base's row where the base has
    it, the mean where several have it but the base does not; padding rows = the mean row."""
    recipe = load_recipe(_fill("""
merge_method: linear
base_model: BASE
models:
  - {model: CHAT2, parameters: {weight: 0.6}}
  - {model: CHAT, parameters: {weight: 0.4}}
  - {model: PLAIN, parameters: {weight: 0.3}}
  - {model: BASE, parameters: {weight: 0.2}}
tokenizer: {source: union, pad_to_multiple_of: 64}
""", vocab_tiny))
    mat = Materializer(recipe.referenced_models(), base_model=recipe.base_model)
    plan = mat.plan(recipe)
    task = next(t for t in plan.tasks if t.out_name == "model.embed_tokens.weight")
    rows = {m: mat._vocab_fetch(plan, task)(m, task.out_name) for m, _ in task.inputs}
    raw = {m: mat._weights[m][task.out_name] for m, _ in task.inputs}
    tok = plan.vocab.vocab
    chat, chat2, plain, base = (vocab_tiny[k] for k in ("chat", "chat2", "plain", "base"))
    own = AutoTokenizer.from_pretrained(chat).get_vocab()
    # <|im_start|>: chat and chat2 have it, the base does not -> the base's row is their mean
    assert torch.equal(rows[base][tok["<|im_start|>"]],
                       (raw[chat2][own["<|im_start|>"]] + raw[chat][own["<|im_start|>"]]) / 2)
    # <tool>: only chat2 -> its row everywhere; w_new: only plain
    t2 = AutoTokenizer.from_pretrained(chat2).get_vocab()["<tool>"]
    assert all(torch.equal(r[tok["<tool>"]], raw[chat2][t2]) for r in rows.values())
    assert torch.equal(rows[chat][tok["w_new"]], raw[plain][48])
    # w5: every model has it -> each its own row
    assert torch.equal(rows[chat][tok["w5"]], raw[chat][5])
    assert plan.vocab.rows == 64 and len(tok) == 52
    assert torch.equal(rows[chat][52], rows[chat][:52].mean(0))


@pytest.mark.slow
def test_smollm2_added_tokens_and_padded_vocabulary_match_mergekit(smollm2_vocab, tmp_path):
    """The real SmolLM2 tokenizer (BPE, 49152 tokens, chat template): a fine-tune adding
    tool-call tokens and one padded to 49216 rows, union vocabulary padded to 64, configured
    rows; the same tensors and tokenizer as mergekit, on disk and in memory, and the same
    scores in memory as from the exported directory."""
    text = _fill("""
merge_method: task_arithmetic
base_model: BASE
models:
  - {model: TOOLS, parameters: {weight: 0.7}}
  - {model: PADDED, parameters: {weight: 0.5}}
dtype: float32
tokenizer:
  source: union
  pad_to_multiple_of: 64
  tokens:
    <tool_call>: {source: {kind: model_token, model: TOOLS, token: "<|im_start|>"}, force: true}
    <|im_end|>: {source: TOOLS, force: true}
""", smollm2_vocab)
    expected = mergekit_merge(text, tmp_path / "mk")
    assert expected["model.embed_tokens.weight"].shape == (49216, 576)
    recipe = load_recipe(text)
    merge_to_disk(recipe, tmp_path / "ours")
    _check_same_model(tmp_path / "ours", tmp_path / "mk", expected)
    assert AutoTokenizer.from_pretrained(tmp_path / "ours").get_vocab()["</tool_call>"] == 49153
    mat = Materializer(recipe.referenced_models(), base_model=recipe.base_model,
                       dtype=torch.float32)
    model = mat.materialize(recipe)
    state = {k: v for k, v in model.state_dict().items() if k in expected}
    assert max_abs_diff(state, expected) <= 1e-6
    # The scorer and lm-eval score the resident model with the output tokenizer: the numbers
    # of the exported model loaded with its own saved tokenizer.
    evs = _tool_call_evaluators(tmp_path)
    in_memory = score(model, mat.tokenizer(recipe), evs)
    assert in_memory == pytest.approx(score(*load_model(tmp_path / "ours"), evs), rel=1e-5)
    assert set(in_memory) >= {"calls/answer_nll", "calls_lm/perplexity"}


def _tool_call_evaluators(tmp_path: Path) -> list:
    """The answers scorer and lm-eval on prompts that use the added tokens."""
    rows = [{"prompt": "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n",
             "answer": '<tool_call>{"name": "weather", "city": "Paris"}</tool_call>'},
            {"prompt": "Call the clock.<tool_call>", "answer": '{"name": "time"}</tool_call>'}]
    data = tmp_path / "calls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "calls_lm.yaml").write_text(yaml.safe_dump({
        "task": "calls_lm", "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(data)}}, "output_type": "loglikelihood",
        "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "perplexity", "aggregation": "perplexity",
                         "higher_is_better": False}]}))
    return [make_evaluator("answers", files={"calls": str(data)}),
            make_evaluator("lm_eval", tasks=["calls_lm"], include_path=str(tmp_path))]


@pytest.mark.e2e
def test_written_recipe_builds_the_same_model_with_mergekit_yaml(vocab_tiny, tmp_path):
    """The recipe written beside the model (``model:`` prefix dropped) is a mergekit config."""
    cli = mergekit_cli("mergekit-yaml")
    merge_to_disk(load_recipe(_fill(RECIPES["tokens_block"], vocab_tiny)), tmp_path / "ours")
    subprocess.run([cli, str(tmp_path / "ours" / "mergekit_config.yml"),
                    str(tmp_path / "mk"), "--quiet"], check=True, capture_output=True)
    _check_same_model(tmp_path / "ours", tmp_path / "mk", load_dir(tmp_path / "mk"))


def test_no_rule_refuses_added_tokens_and_names_the_fix(vocab_tiny, tmp_path):
    recipe = load_recipe(_fill(RECIPES["model_prefix"], vocab_tiny).replace(
        "tokenizer_source: model:" + vocab_tiny["chat2"], ""))
    with pytest.raises(ModelError, match="set tokenizer_source"):
        merge_to_disk(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_different_base_vocabularies_are_refused_under_any_rule(tiny, tmp_path):
    """tiny['vocab'] has another core vocabulary (id 39 is '<unk>' there, 'w39' in the base)."""
    for rule in ("union", "base"):
        recipe = load_recipe({"merge_method": "linear", "base_model": tiny["base"],
                              "models": [{"model": tiny["base"], "parameters": {"weight": 1}},
                                         {"model": tiny["vocab"], "parameters": {"weight": 1}}],
                              "tokenizer_source": rule})
        with pytest.raises(ModelError, match="token 39 is 'w39' in one and '<unk>' in the other"):
            merge_to_disk(recipe, tmp_path / "out")


@pytest.mark.parametrize("doc, message", [
    ({"tokenizer_source": "base", "tokenizer": {"source": "union"}}, "not both"),
    ({"tokenizer": {"pad_to_multiple_of": 0}}, "greater than 0"),
    ({"tokenizer_source": "base", "chat_template": "chatml"}, "named templates"),
    ({"tokenizer": {"tokens": {"<x>": {"source": "/elsewhere"}}}}, "does not merge"),
    ({"tokenizer": {"tokens": {"<x>": {"source": {"kind": "model_token", "model": "A"}}}}},
     "exactly one of 'token' or 'token_id'"),
])
def test_bad_tokenizer_settings_are_one_sentence(doc, message):
    base = {"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 1}},
                                                 {"model": "B", "parameters": {"weight": 1}}]}
    with pytest.raises(ConfigError, match=message):
        load_recipe({**base, **doc})


def test_output_tokenizer_and_chat_template_are_written_and_used(vocab_tiny, tmp_path):
    """The model directory carries the output tokenizer with the recipe's chat template, and
    the in-memory materializer hands evaluators that same tokenizer."""
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    recipe = load_recipe({**load_recipe(_fill(RECIPES["union_padded"], vocab_tiny)).model_dump(
        exclude_none=True), "chat_template": template})
    merge_to_disk(recipe, tmp_path / "ours")
    saved = AutoTokenizer.from_pretrained(tmp_path / "ours")
    mat = Materializer(recipe.referenced_models(), base_model=recipe.base_model)
    used = mat.tokenizer(recipe)
    assert used is mat.tokenizer(recipe)  # built once
    assert saved.chat_template == used.chat_template == template
    text = "w1 <|im_start|> w2 <tool> w3"
    assert saved(text)["input_ids"] == used(text)["input_ids"] == [1, 48, 2, 50, 3]
