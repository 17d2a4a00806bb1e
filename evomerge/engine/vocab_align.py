"""Re-index one token-indexed tensor of every model to the output vocabulary (mergekit's rules).

For the models M that feed one output tensor (a slice's sources, with the base) and an output
token of id i, model m's row i is::

    own      m's row of the token                  if m has it (and the token is not forced)
    else     the token's configured source         (tokenizer.tokens: a model's row, a given
                                                    token's row of a model, or zeros)
    else     the only model that has it: its row
             none has it: zeros
             the base has it: the base's row
             otherwise: the mean of the rows of the models that have it (summed in model order)

and rows beyond the vocabulary (``pad_to_multiple_of``) are the mean of the vocabulary's rows,
per model. Rows are gathered with index tensors, not a loop over tokens: (V, H) work per model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from evomerge.engine.lowrank import LowRank, densify
from evomerge.engine.vocab import VocabPlan
from evomerge.engine.vocab_config import ModelToken, TokenEmbedding, ZeroEmbedding
from evomerge.errors import ConfigError

__all__ = ["align", "aligned_inputs"]

log = logging.getLogger(__name__)
Fetch = Callable[[str, str], torch.Tensor]


def _configured(vocab: VocabPlan, token: str, i: int, emb: TokenEmbedding,
                tensors: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """The row a ``tokenizer.tokens`` entry asks for (token ``token``, output id ``i``)."""
    first = next(iter(tensors.values()))
    if isinstance(emb.source, ZeroEmbedding):
        return first.new_zeros(shape)
    model = emb.source.model if isinstance(emb.source, ModelToken) else emb.source
    if model not in tensors:
        raise ConfigError(f"tokenizer.tokens[{token!r}] takes its row from model {model!r}, "
                          f"which does not feed this tensor ({', '.join(tensors)}).")
    if isinstance(emb.source, ModelToken):
        src = emb.source
        row = src.token_id if src.token is None else vocab.vocabs[model].get(src.token, -1)
        if not 0 <= row < tensors[model].shape[0]:
            what = repr(src.token) if src.token is not None else f"id {src.token_id}"
            raise ConfigError(f"tokenizer.tokens[{token!r}]: token {what} is not a row of "
                              f"model {model!r}.")
        return tensors[model][row]
    row = int(vocab.perms[model][i])
    if row < 0:
        raise ConfigError(f"tokenizer.tokens[{token!r}] takes its row from model {model!r}, "
                          "which does not have that token.")
    return tensors[model][row]


def _defaults(vocab: VocabPlan, tensors: Mapping[str, torch.Tensor], perms: torch.Tensor,
              need: torch.Tensor, base: str | None) -> torch.Tensor:
    """Rows (len(need ids), H) for the output ids in ``need`` (see the module docstring)."""
    models, ts = list(tensors), list(tensors.values())
    ids = need.nonzero().squeeze(1)
    out = ts[0].new_zeros((ids.numel(), *ts[0].shape[1:]))
    present = perms[:, ids] >= 0                                   # (M, K)
    count = present.sum(0)                                         # (K,)
    configured = torch.tensor([vocab.tokens.get(int(i)) is not None
                               and vocab.tokens[int(i)].source is not None for i in ids],
                              dtype=torch.bool, device=perms.device)
    auto = ~configured
    b = models.index(base) if base in models else None
    via_base = auto & (count > 1) & present[b] if b is not None else torch.zeros_like(auto)
    mean = auto & (count > 1) & ~via_base
    acc = out[mean]
    for j, t in enumerate(ts):
        if int((auto & (count == 1) & present[j]).sum()):
            sel = auto & (count == 1) & present[j]
            out[sel] = t[perms[j, ids[sel]]]
        sel = present[j, mean]
        acc[sel] = acc[sel] + t[perms[j, ids[mean][sel]]]
    out[mean] = acc / count[mean].to(acc.dtype).view(-1, *[1] * (acc.dim() - 1))
    if b is not None and bool(via_base.any()):
        out[via_base] = ts[b][perms[b, ids[via_base]]]
    for k in configured.nonzero().squeeze(1).tolist():
        i = int(ids[k])
        token = next(t for t, j in vocab.vocab.items() if j == i)
        out[k] = _configured(vocab, token, i, vocab.tokens[i], tensors, tuple(out.shape[1:]))
    missing = int((auto & (count == 0)).sum())
    if missing:
        log.warning("%d output tokens are in no model's vocabulary; their rows are zero.",
                    missing)
    return out


@torch.no_grad()
def align(vocab: VocabPlan, tensors: Mapping[str, torch.Tensor], base: str | None
          ) -> dict[str, torch.Tensor]:
    """Each model's tensor re-indexed to ``vocab`` (rows = ``vocab.rows``), in the dtype the
    inputs promote to. ``tensors``: model -> its token-indexed tensor (vocabulary on axis 0),
    in merge order; ``base``: the slice's base model (None: no base rule)."""
    models, ts = list(tensors), list(tensors.values())
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    ts = [t.to(dtype) for t in ts]
    tensors = dict(zip(models, ts))
    dev, size = ts[0].device, len(vocab.vocab)
    perms = torch.stack([vocab.perms[m] for m in models]).to(dev)          # (M, V)
    forced = torch.zeros(size, dtype=torch.bool)
    for i, emb in vocab.tokens.items():
        forced[i] = emb.force
    forced = forced.to(dev)
    need = forced | (perms < 0).any(0)
    rows = _defaults(vocab, tensors, perms, need, base) if bool(need.any()) else None
    slot = torch.full((size,), -1, dtype=torch.int64, device=dev)
    slot[need] = torch.arange(int(need.sum()), device=dev)
    out = {}
    for j, (m, t) in enumerate(tensors.items()):
        new = t.new_zeros((vocab.rows, *t.shape[1:]))
        own = (perms[j] >= 0) & ~forced
        ids = own.nonzero().squeeze(1)
        new[ids] = t[perms[j, ids]]
        if rows is not None:
            rest = (~own).nonzero().squeeze(1)
            new[rest] = rows[slot[rest]]
        if vocab.rows > size:  # padding rows: the mean row (J. Hewitt, vocabulary expansion)
            new[size:] = torch.mean(new[:size], dim=0)
        out[m] = new
    return out


def aligned_inputs(task, vocab: VocabPlan, fetch: Fetch, compute_dtype: torch.dtype | None
                   ) -> Fetch:
    """A ``fetch`` for a ``vocab`` task: its inputs (cast to ``compute_dtype``, as mergekit
    casts before re-indexing) re-indexed to ``vocab`` together."""
    refs = list(task.inputs) + ([task.base] if task.base is not None else [])
    raw = {}
    for model, name in refs:
        t = fetch(model, name)
        dense = t.base if isinstance(t, LowRank) else t  # an adapter's row: formed in full
        raw[model] = densify(t, compute_dtype or dense.dtype, dense.device)
    done = align(vocab, raw, task.vocab_base)
    return lambda model, name: done[model]
