"""The model card (``README.md``) written with every merged model, in the Hub's format.

YAML front matter as the Hugging Face Hub reads it (``base_model``, ``tags``,
``library_name``), then what the model is: the method and its paper, the sources, the output
vocabulary of a tokenizer rule, the study and trial it came from with its objective values (on
validation, and on test when the study's report re-scored it) and the front plot, the recipe,
and how to rebuild and upload it::

    ---
    base_model: [HuggingFaceTB/SmolLM2-135M-Instruct]
    tags: [merge, evomerge]
    library_name: transformers
    ---

Only references that name a Hub repository (``owner/name`` that is not a local directory) go
under ``base_model``; local sources are listed in the text, or replaced by ``base_model_ids``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evomerge import __version__
from evomerge.engine.outputs import markdown_text
from evomerge.engine.plan import MergePlan

__all__ = ["ObjectiveValue", "Provenance", "model_card", "hub_ids"]

_HUB_ID = re.compile(r"^[\w.-]{1,96}/[\w.-]{1,96}$")


@dataclass(frozen=True)
class ObjectiveValue:
    """One objective of the study and the exported trial's value on it."""

    key: str             # task/metric
    direction: str       # maximize | minimize
    validation: float
    test: float | None = None


@dataclass(frozen=True)
class Provenance:
    """Where a merged model came from, when it was exported from a study.

    Attributes:
        study: the study's name.
        trial: the trial number.
        objectives: the trial's value on each objective.
        evaluations: completed evaluations in the study when it was exported.
        optimizer: the study's optimizer.
        front_size: points on the study's Pareto front.
        plot_png: the front plot (PNG bytes), written beside the card as ``front.png``.
    """

    study: str
    trial: int
    objectives: tuple[ObjectiveValue, ...]
    evaluations: int = 0
    optimizer: str = ""
    front_size: int = 0
    plot_png: bytes | None = field(default=None, repr=False)


def hub_ids(refs: Sequence[str]) -> list[str]:
    """The references that name Hub repositories (``owner/name`` not found as a local
    directory); local paths are not valid ``base_model`` values on the Hub."""
    return [r for r in refs if _HUB_ID.match(r) and ".." not in r and "--" not in r
            and not Path(r).expanduser().exists()]


def _front_matter(plan: MergePlan, base_model_ids: Sequence[str] | None) -> str:
    meta: dict = {}
    ids = list(base_model_ids) if base_model_ids else hub_ids(plan.recipe.referenced_models())
    if ids:
        meta["base_model"] = ids
    meta.update(tags=["merge", "evomerge"], library_name="transformers")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _sources(plan: MergePlan, ids: Sequence[str] | None) -> str:
    recipe, local = plan.recipe, []
    hub = set(ids or hub_ids(recipe.referenced_models()))
    lines = []
    for ref in recipe.referenced_models():
        role = " (base)" if ref == recipe.base_model else ""
        lines.append(f"- {markdown_text(ref)}{role}")
        if ref not in hub:
            local.append(ref)
    note = ("\n\nLocal paths are not Hub ids: name the sources' Hub repositories under "
            "`base_model` above (`--base-model-id` does it at merge time) before uploading."
            if local and not ids else "")
    return "\n".join(lines) + note


def _vocabulary(plan: MergePlan) -> str:
    vocab = plan.vocab
    if vocab is None:
        return ""
    settings = plan.recipe.tokenizer_settings
    pad = (f"; {vocab.rows} embedding rows, a multiple of {settings.pad_to_multiple_of}"
           if vocab.rows > len(vocab.vocab) else "")
    return (f"\n## Tokenizer\n\nThe sources' tokenizers differ; the output tokenizer is "
            f"{markdown_text(settings.source)} ({len(vocab.vocab)} tokens{pad}), written with "
            f"the model. Each "
            f"source's embedding rows were re-indexed to it by mergekit's rules.\n")


def _provenance(p: Provenance | None) -> str:
    if p is None:
        return ""
    tested = any(o.test is not None for o in p.objectives)
    head = "| objective | direction | validation |" + (" test |" if tested else "")
    rule = "|---|---|---|" + ("---|" if tested else "")
    rows = [f"| {markdown_text(o.key)} | {o.direction} | {o.validation:.6g} |"
            + (f" {o.test:.6g} |" if o.test is not None else " |" if tested else "")
            for o in p.objectives]
    searched = f"{p.evaluations} evaluations, optimizer `{p.optimizer}`" if p.evaluations else ""
    front = f"; the Pareto front has {p.front_size} points" if p.front_size else ""
    plot = ("\n\n![The study's front, this model marked](front.png)" if p.plot_png else "")
    test_note = ("" if tested else "\n\nNot re-scored on test: `evomerge report "
                 f"{p.study}` scores the front on the held-out split.")
    return (f"\n## Where it came from\n\nTrial {p.trial} of the evomerge study "
            f"{markdown_text(p.study)} "
            f"({searched}{front}).\n\n" + "\n".join([head, rule, *rows]) + test_note + plot
            + "\n")


def model_card(plan: MergePlan, provenance: Provenance | None = None,
               base_model_ids: Sequence[str] | None = None, name: str = "Merged model") -> str:
    """The ``README.md`` of the model ``plan`` builds (see the module docstring)."""
    recipe = plan.recipe
    text = recipe.to_yaml()
    fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    upload = ("hf auth login\nhf upload YOUR_ORG/YOUR_MODEL .   # from this directory "
              "(huggingface_hub < 1.0: huggingface-cli upload YOUR_ORG/YOUR_MODEL .)")
    return (_front_matter(plan, base_model_ids)
            + f"# {name}\n\nMerged by evomerge {__version__} with the "
            f"`{recipe.merge_method}` method ({plan.method.paper}): {plan.num_layers} layers, "
            f"from\n\n{_sources(plan, base_model_ids)}\n"
            + _vocabulary(plan) + _provenance(provenance)
            + "\n## Recipe\n\nThe exact recipe, also in `mergekit_config.yml` (mergekit "
            f"reads it too):\n\n{fence}yaml\n" + text + f"{fence}\n\nRebuild: "
            "`evomerge merge mergekit_config.yml OUT` or `mergekit-yaml mergekit_config.yml "
            f"OUT`.\n\n## Upload\n\n```bash\n{upload}\n```\n")
