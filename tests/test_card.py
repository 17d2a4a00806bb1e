"""The model card written with every merged model: Hub front matter, recipe, provenance."""

from __future__ import annotations

import yaml
from huggingface_hub import ModelCard

from evomerge.engine.card import ObjectiveValue, Provenance, hub_ids
from evomerge.engine.merge import merge_to_disk
from evomerge.engine.recipe import load_recipe


def test_hub_ids_are_repository_names_not_local_paths(tiny, tmp_path, monkeypatch):
    (tmp_path / "zoo" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    refs = ["HuggingFaceTB/SmolLM2-135M-Instruct", "zoo/base", tiny["a"], "a/../b", "org--x/y"]
    assert hub_ids(refs) == ["HuggingFaceTB/SmolLM2-135M-Instruct"]


def test_merge_writes_a_card_the_hub_reads(tiny, tmp_path):
    recipe = load_recipe({"merge_method": "ties", "base_model": tiny["base"],
                          "models": [{"model": tiny["a"], "parameters": {"weight": 0.5,
                                                                         "density": 0.5}}]})
    card = Provenance("my_study", 7, (ObjectiveValue("add/acc", "maximize", 0.5, 0.25),
                                      ObjectiveValue("words/nll", "minimize", 1.5)),
                      evaluations=40, optimizer="nsga2", front_size=5, plot_png=b"\x89PNG..")
    merge_to_disk(recipe, tmp_path / "m", provenance=card, base_model_ids=["org/base"])
    text = (tmp_path / "m" / "README.md").read_text()
    data = ModelCard(text).data.to_dict()
    assert data == {"base_model": ["org/base"], "tags": ["merge", "evomerge"],
                    "library_name": "transformers"}
    assert "Trial 7 of the evomerge study my_study (40 evaluations, optimizer `nsga2`; " \
           "the Pareto front has 5 points)" in text
    assert "| add/acc | maximize | 0.5 | 0.25 |" in text
    assert "| words/nll | minimize | 1.5 | |" in text
    assert "![The study's front, this model marked](front.png)" in text
    assert (tmp_path / "m" / "front.png").read_bytes() == b"\x89PNG.."
    recipe_block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert load_recipe(yaml.safe_load(recipe_block)) == recipe
    assert recipe_block == (tmp_path / "m" / "mergekit_config.yml").read_text()
    assert "hf upload YOUR_ORG/YOUR_MODEL ." in text


def test_local_sources_are_named_in_the_text_not_the_metadata(tiny, tmp_path):
    recipe = load_recipe({"merge_method": "linear", "models": [
        {"model": tiny["a"], "parameters": {"weight": 1.0}},
        {"model": tiny["b"], "parameters": {"weight": 1.0}}]})
    merge_to_disk(recipe, tmp_path / "m")
    text = (tmp_path / "m" / "README.md").read_text()
    assert "base_model" not in ModelCard(text).data.to_dict()
    assert f"- {tiny['a']}\n" in text and "Local paths are not Hub ids" in text
    assert "Where it came from" not in text  # no study: no provenance section


def test_names_cannot_inject_markdown_or_close_the_recipe_block(tiny, tmp_path):
    recipe = load_recipe({"merge_method": "linear", "models": [
        {"model": tiny["a"], "parameters": {"weight": 1.0}},
        {"model": tiny["b"], "parameters": {"weight": 1.0}}],
        "evomerge": {"note": "```\n<script>x</script>"}})
    card = Provenance("s", 1, (ObjectiveValue("t|<b>x</b>/m", "minimize", 1.0),))
    merge_to_disk(recipe, tmp_path / "m", provenance=card)
    text = (tmp_path / "m" / "README.md").read_text()
    assert "<b>" not in text and "| t\\|&lt;b&gt;x&lt;/b&gt;/m | minimize | 1 |" in text
    assert "````yaml\n" in text  # a fence longer than any backtick run in the recipe
    assert yaml.safe_load(text.split("````yaml\n", 1)[1].split("````", 1)[0]) == yaml.safe_load(
        recipe.to_yaml())
