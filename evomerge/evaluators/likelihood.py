"""Teacher-forced log-likelihoods of continuations, tokenized the way lm-eval does.

``encode_pair`` splits (context, continuation) like lm-eval's causal ``loglikelihood``:
trailing spaces of the context move to the continuation, the pair is encoded whole, and the
continuation's tokens are what follows the context's own encoding. ``loglikelihoods`` scores
many pairs in right-padded batches, taking the log-softmax of the continuation rows only.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["encode_pair", "loglikelihoods"]


def encode_pair(tokenizer: Any, context: str, continuation: str,
                keep_context_space: bool = False) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) the way lm-eval's causal ``loglikelihood`` splits them.

    ``keep_context_space``: leave the context's trailing whitespace in the context. A chat
    template's generation prompt ends in a newline that belongs to the template; moved into
    the continuation (lm-eval's rule), its token would be scored as part of the answer."""
    n = len(context) - len(context.rstrip())
    if n and not keep_context_space:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def _keeps_logits(model: Any) -> bool:
    """Whether ``model.forward`` can return the last k positions' logits only."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def loglikelihoods(model: Any, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16,
                   max_length: int | None = None, alt_last: int | None = None
                   ) -> list[tuple[float, bool, int, int]]:
    """Per pair: (sum log p(continuation | context), every continuation token the argmax,
    number of argmax tokens, number of tokens).

    Batches are right-padded, longest first. ``alt_last``: a token id that also counts as
    right where the continuation's last token is expected (the zoo: EOS for the newline that
    ends an answer, as generation stops at either).
    """
    keys = [(tuple(c), tuple(a)) for c, a in pairs]
    unique = list(dict.fromkeys(keys))  # a pair asked twice is computed once
    if len(unique) < len(pairs):
        done = dict(zip(unique, loglikelihoods(model, [(list(c), list(a)) for c, a in unique],
                                               batch_size, max_length, alt_last)))
        return [done[k] for k in keys]
    device = next(model.parameters()).device
    max_length = max_length or getattr(model.config, "max_position_embeddings", 2048)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    keep = _keeps_logits(model)
    out: list[Any] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        for i, row in zip(idx, _score_batch(model, [pairs[i] for i in idx], max_length,
                                            alt_last, keep, device)):
            out[i] = row
    return out


def _score_batch(model: Any, pairs: list[tuple[list[int], list[int]]], max_length: int,
                 alt_last: int | None, keep: bool, device: torch.device
                 ) -> list[tuple[float, bool, int, int]]:
    seqs = [(c + a)[-(max_length + 1):][:-1] for c, a in pairs]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    target = torch.full((len(seqs), width), -1, dtype=torch.long)  # token predicted at t
    last = torch.zeros(len(seqs), width, dtype=torch.bool)
    first = width
    for r, (s, (_, cont)) in enumerate(zip(seqs, pairs)):
        n, end = min(len(cont), len(s)), len(s)
        ids[r, :end] = torch.tensor(s)
        target[r, end - n:end] = torch.tensor(cont[len(cont) - n:])
        last[r, end - 1] = True
        first = min(first, end - n)
    # Right padding under causal attention never reaches a real position, so no mask: with
    # one, attention leaves its fused causal path (lm-eval passes none either). Only the
    # positions from the first continuation row on need logits: (B, width - first, V).
    kwargs = {"logits_to_keep": width - first} if keep else {}
    logits = model(input_ids=ids.to(device), **kwargs).logits
    logits = logits[:, logits.shape[1] - (width - first):]
    target, last = target[:, first:].to(logits.device), last[:, first:].to(logits.device)
    sel = target >= 0
    rows = torch.log_softmax(logits[sel].float(), dim=-1)  # (N, V): continuation rows only
    tgt = target[sel]
    ll = rows.gather(-1, tgt[:, None]).squeeze(-1).double()
    pred = rows.argmax(-1)
    right = pred == tgt
    if alt_last is not None:
        right |= (pred == alt_last) & last[sel]
    owner = sel.nonzero()[:, 0]
    ll_sum = torch.zeros(len(seqs), dtype=torch.float64, device=ll.device).index_add_(0, owner, ll)
    n_right = torch.zeros(len(seqs), dtype=torch.long, device=ll.device).index_add_(
        0, owner, right.long())
    n_tok = sel.sum(1)
    return [(float(a), int(r) == int(n), int(r), int(n))
            for a, r, n in zip(ll_sum.tolist(), n_right.tolist(), n_tok.tolist())]
