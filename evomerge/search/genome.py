"""The genome of a search space: :class:`~evomerge.search.param_genome.ParamGenome` for
parameter-space and layer-swap spaces, :class:`~evomerge.search.dfs.PathGenome` for data-flow
spaces; both implement :class:`~evomerge.search.gene.Genome`."""

from __future__ import annotations

from evomerge.engine.sources import ModelSource
from evomerge.search.dfs import PathGenome
from evomerge.search.gene import Gene, Genome, genome_hash, recipe_hash
from evomerge.search.param_genome import ParamGenome
from evomerge.search.space import SearchSpace

__all__ = ["Gene", "Genome", "ParamGenome", "PathGenome", "genome_hash", "recipe_hash",
           "make_genome", "genome_of_models"]


def make_genome(space: SearchSpace, num_layers: int, source_dtype: str | None = None) -> Genome:
    """The genome of ``space`` over models of ``num_layers`` layers stored as
    ``source_dtype``."""
    if space.dfs is not None:
        return PathGenome(space, num_layers, source_dtype)
    return ParamGenome(space, num_layers, source_dtype)


def genome_of_models(space: SearchSpace) -> Genome:
    """The genome of ``space`` over its models: depth and stored dtype from their headers
    (checked, see :meth:`SearchSpace.check_models`)."""
    num_layers = space.check_models()
    stored = ModelSource(space.base_model, field="base_model").stored_dtype
    return make_genome(space, num_layers, str(stored).removeprefix("torch."))
