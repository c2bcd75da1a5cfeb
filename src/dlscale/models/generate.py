"""Autoregressive text generation for language models: greedy, temperature and top-k sampling.

    tokens = generate(model, prompt_ids, max_new_tokens=50, temperature=0.8, top_k=40)

A dlscale GPT keeps each layer's keys and values in a KV cache, so every new
token costs one position's forward pass. Any other model that maps token ids
(B, T) to logits (B, T, vocab) works too, by rerunning the whole context each
step. Learned position embeddings stop at the context length (block_size), so
once the sequence outgrows it the GPT falls back to that same recomputation on
the last block_size tokens: a sliding window, and any length works.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlscale.errors import UserError
from dlscale.models.gpt import GPT, KVCache

__all__ = ["generate"]


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue each row of the prompt idx (B, T) by max_new_tokens; returns (B, T + max_new_tokens).

    temperature 0 picks the most likely token (greedy); top_k keeps only the k most
    likely tokens before sampling; a seeded generator makes the sampling repeatable.
    The model runs in eval mode and under inference_mode; its mode is restored after.
    """
    _check(idx, max_new_tokens, temperature, top_k)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _generate(model, idx, max_new_tokens, temperature, top_k, generator)
    finally:
        model.train(was_training)


def _check(idx: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype.is_floating_point or idx.is_complex():
        raise UserError("the prompt must be integer token ids of shape (batch, tokens); encode the text first")
    if idx.shape[1] == 0 or idx.shape[0] == 0:
        raise UserError("the prompt is empty; give at least one token to continue from")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be a whole number >= 0, not {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise UserError(f"temperature must be a finite number >= 0 (0 is greedy), not {temperature!r}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0 (0 is greedy), not {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k must be a whole number >= 1 or None (no limit), not {top_k!r}")


def _generate(model, idx, max_new_tokens, temperature, top_k, generator) -> torch.Tensor:
    block_size = getattr(model, "block_size", None)  # None: the model takes any length
    cache = KVCache(model, idx.shape[0]) if isinstance(model, GPT) else None
    tokens = idx.long()
    context = tokens if block_size is None else tokens[:, -block_size:]
    logits = model.forward_cached(context, cache) if cache is not None else model(context)
    for step in range(max_new_tokens):
        token = _next_token(logits[:, -1], temperature, top_k, generator)
        tokens = torch.cat([tokens, token], dim=1)
        if step == max_new_tokens - 1:
            break
        if cache is not None and not cache.full:
            logits = model.forward_cached(token, cache)
        else:  # no cache, or the sequence outgrew the context: rerun the last block_size tokens
            logits = model(tokens if block_size is None else tokens[:, -block_size:])
    return tokens


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """One token id per row (B, 1) from the last position's logits (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # subtracting the maximum first keeps a tiny temperature from overflowing to inf - inf = nan
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)
