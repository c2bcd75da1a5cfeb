"""A GPT-2-style decoder-only language model, after nanoGPT's model.py.

Token + learned position embeddings, a stack of pre-LayerNorm blocks with
causal self-attention and a GELU MLP, a final LayerNorm, and an output layer
that shares its weight with the token embedding (weight tying, as GPT-2).
At 12 layers, width 768, 12 heads, context 1024 and vocabulary 50257 this is
GPT-2 small: 124,439,808 parameters.

The model keeps `n_layer`, `n_embd` and `block_size` as attributes so that the
transformer FLOP estimate 6N + 12*L*d*T per token can be computed from it.

`forward(idx)` is the training path. Generation uses `forward_cached(idx, cache)`
instead, which keeps each layer's keys and values in a `KVCache` so that a new
token costs one position's work rather than the whole context's; see
models/generate.py.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlscale.errors import UserError


class CausalSelfAttention(nn.Module):
    """Multi-head attention where position t only sees positions <= t."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash/memory-efficient kernels
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def forward_cached(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Attention for positions start..start+T, which see the cached positions before them.

        Writes this chunk's keys and values into k_cache and v_cache (B, n_head, block_size, head_dim).
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        end = start + T
        k_cache[:B, :, start:end] = k
        v_cache[:B, :, start:end] = v
        k, v = k_cache[:B, :, :end], v_cache[:B, :, :end]
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v)  # one new token sees every position
        else:  # query at position start+i sees keys at positions <= start+i
            mask = torch.arange(end, device=x.device) <= torch.arange(start, end, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: int
    ) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), k_cache, v_cache, start)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Each layer's keys and values for the positions seen so far, preallocated to the context.

    `length` is how many positions are filled; `GPT.forward_cached` appends after them.
    Once `length` reaches `block_size` the cache is full: learned position
    embeddings end there, so longer generation recomputes a sliding window instead.
    """

    def __init__(self, model: "GPT", batch_size: int):
        weight = model.wte.weight
        shape = (batch_size, model.n_head, model.block_size, model.n_embd // model.n_head)
        self.k = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in range(model.n_layer)]
        self.v = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in range(model.n_layer)]
        self.block_size = model.block_size
        self.length = 0

    @property
    def full(self) -> bool:
        return self.length >= self.block_size


class GPT(nn.Module):
    """Takes int64 token ids (B, T), T <= block_size; returns logits (B, T, vocab_size)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd

        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix, counted once
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) everywhere, and the projections that write into the
        # residual stream scaled by 1/sqrt(2 * n_layer) so its variance does not
        # grow with depth.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.block_size:
            raise UserError(
                f"the sequence has {T} tokens but the model's context is {self.block_size}; "
                f"use sequences of at most {self.block_size} tokens or build the model for a longer context"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens at positions cache.length..+T, given those before.

        Equal to the matching rows of forward() on the whole sequence; advances cache.length by T.
        """
        B, T = idx.shape
        start = cache.length
        if start + T > self.block_size:
            raise UserError(
                f"the KV cache holds {start} of {self.block_size} positions and cannot take {T} more; "
                f"start a new cache on the last {self.block_size} tokens"
            )
        if B > cache.k[0].shape[0]:
            raise UserError(f"the batch has {B} rows but the KV cache was made for {cache.k[0].shape[0]}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block, k_cache, v_cache in zip(self.h, cache.k, cache.v):
            x = block.forward_cached(x, k_cache, v_cache, start)
        cache.length = start + T
        return self.lm_head(self.ln_f(x))


def gpt_tiny(vocab_size: int, block_size: int) -> GPT:
    """A two-layer toy for tests and CPU demos (about 0.1M parameters with bytes)."""
    return GPT(vocab_size, block_size, n_layer=2, n_head=2, n_embd=64)


def gpt_small(vocab_size: int, block_size: int) -> GPT:
    """The GPT-2 124M shape."""
    return GPT(vocab_size, block_size, n_layer=12, n_head=12, n_embd=768)
