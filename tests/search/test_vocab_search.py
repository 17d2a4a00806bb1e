"""A search over fine-tunes whose tokenizers differ: every candidate recipe carries the space's
tokenizer rule, and the worker scores it with the tokenizer export writes (search = export;
lm-eval's evaluator on the real SmolLM2 tokenizer: tests/test_vocab.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evomerge.engine.merge import merge_to_disk
from evomerge.errors import ConfigError
from evomerge.evaluators import make_evaluator
from evomerge.scoring import load_model, score
from evomerge.search.genome import genome_of_models
from evomerge.search.space import load_space
from evomerge.search.worker import Worker

# Prompts and answers that need the added tokens (ids 48-50 of the union vocabulary).
EXAMPLES = [{"prompt": "w1 <|im_start|> w2", "answer": "w3 <|im_end|>"},
            {"prompt": "<|im_start|> w7 <tool>", "answer": "w9"},
            {"prompt": "w4 w5", "answer": "<tool> w6"}]


def _space(vocab_tiny: dict[str, str], tmp_path, **over) -> dict:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return {"name": "vocab", "base_model": vocab_tiny["base"],
            "models": {"chat": vocab_tiny["chat"], "chat2": vocab_tiny["chat2"]},
            "method": "ties", "parameters": {"weight": [0.0, 1.0], "density": [0.2, 1.0]},
            "evaluators": {"qa": {"type": "answers", "files": {"qa": str(data)}}},
            "objectives": [{"evaluator": "qa", "task": "qa", "metric": "answer_nll",
                            "direction": "minimize"}],
            "budget": {"trials": 4}, "device": "cpu",
            "tokenizer": {"source": "union", "pad_to_multiple_of": 64}, **over}


@pytest.mark.parametrize("swap", [False, True])
def test_candidates_are_scored_with_the_exported_tokenizer(vocab_tiny, tmp_path, swap):
    """The worker's scores of a candidate equal the scores of the model `evomerge merge`
    builds from its recipe, loaded with its own saved tokenizer; a layer-swap candidate names
    the base, so the output vocabulary is the same whichever model supplies layer 0."""
    over = {"method": None, "parameters": {}, "layer_swap": True,  # chat2's vocabulary
            "tokenizer": {"source": f"model:{vocab_tiny['chat2']}"}} if swap else {}
    space = load_space(_space(vocab_tiny, tmp_path, **over))
    worker, genome = Worker(space), genome_of_models(space)
    recipe = genome.recipe(genome.from_unit(np.full(genome.dim, 0.7)))
    assert recipe.tokenizer.source in ("union", vocab_tiny["chat2"])
    assert recipe.base_model == vocab_tiny["base"]
    got = worker.run(0, recipe.to_yaml())
    assert got.error is None
    merge_to_disk(recipe, tmp_path / "out")
    model, tokenizer = load_model(tmp_path / "out")
    assert tokenizer.convert_tokens_to_ids("<tool>") == 50
    assert worker.tokenizer_for(recipe)("<tool> w1")["input_ids"] == tokenizer("<tool> w1")[
        "input_ids"]
    evs = [make_evaluator("answers", files={"qa": str(tmp_path / "qa.jsonl")})]
    exported = score(model, tokenizer, evs)
    assert set(got.scores) == {"qa/answer_nll", "qa/token_acc", "qa/greedy_match"}
    assert got.scores == pytest.approx(exported, rel=1e-6, abs=1e-7)
    # the base's own tokenizer does not know the added tokens: its scores differ
    assert score(model, worker.tokenizer, evs[:1])["qa/answer_nll"] != pytest.approx(
        exported["qa/answer_nll"], rel=1e-3)


def test_rules_a_space_cannot_keep_fixed_are_refused(vocab_tiny, tmp_path):
    with pytest.raises(ConfigError, match="need one tokenizer"):
        load_space(_space(vocab_tiny, tmp_path, method=None, parameters={}, dfs={}))
    with pytest.raises(ConfigError, match="'union' vocabulary"):  # models differ per candidate
        load_space(_space(vocab_tiny, tmp_path, method=None, parameters={}, layer_swap=True))
    with pytest.raises(ConfigError, match="not both"):
        load_space(_space(vocab_tiny, tmp_path, tokenizer_source="base"))
