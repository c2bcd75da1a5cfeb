"""Generation: the KV cache gives the full forward's logits, sampling options, arguments."""

import pytest
import torch
from torch import nn

from dlscale.errors import UserError
from dlscale.models.generate import generate
from dlscale.models.gpt import KVCache, gpt_tiny


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return gpt_tiny(vocab_size=50, block_size=16).eval()


class Recompute(nn.Module):
    """The same GPT behind a plain module, so generate() cannot use the KV cache."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt
        self.block_size = gpt.block_size

    def forward(self, idx):
        return self.gpt(idx)


def test_cached_logits_equal_the_full_forward_position_by_position(model):
    x = torch.randint(0, 50, (2, 16))
    with torch.inference_mode():
        full = model(x)
        cache = KVCache(model, 2)
        # a prompt chunk, a chunk at an offset (explicit mask), then one token at a time
        chunks = [model.forward_cached(x[:, :5], cache), model.forward_cached(x[:, 5:9], cache)]
        chunks += [model.forward_cached(x[:, t : t + 1], cache) for t in range(9, 16)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)
    assert cache.full


def test_a_full_cache_refuses_more_tokens(model):
    cache = KVCache(model, 1)
    with torch.inference_mode():
        model.forward_cached(torch.zeros(1, 16, dtype=torch.long), cache)
        with pytest.raises(UserError, match="cannot take 1 more"):
            model.forward_cached(torch.zeros(1, 1, dtype=torch.long), cache)


def test_greedy_with_the_cache_equals_greedy_by_recomputation(model):
    prompt = torch.randint(0, 50, (3, 4))
    cached = generate(model, prompt, max_new_tokens=10, temperature=0)
    recomputed = generate(Recompute(model), prompt, max_new_tokens=10, temperature=0)
    assert cached.shape == (3, 14)
    assert torch.equal(cached[:, :4], prompt)
    assert torch.equal(cached, recomputed)


def test_generation_past_the_context_slides_the_window(model):
    prompt = torch.randint(0, 50, (2, 10))
    out = generate(model, prompt, max_new_tokens=30, temperature=0)
    assert out.shape == (2, 40)
    assert torch.equal(out, generate(Recompute(model), prompt, max_new_tokens=30, temperature=0))


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(model):
    prompt = torch.randint(0, 50, (1, 25))
    out = generate(model, prompt, max_new_tokens=3, temperature=0)
    assert out.shape == (1, 28) and torch.equal(out[:, :25], prompt)
    assert torch.equal(out[:, 25:], generate(model, prompt[:, -16:], max_new_tokens=3, temperature=0)[:, 16:])


def test_top_k_1_is_greedy(model):
    prompt = torch.randint(0, 50, (2, 3))
    greedy = generate(model, prompt, max_new_tokens=8, temperature=0)
    assert torch.equal(generate(model, prompt, max_new_tokens=8, temperature=1.5, top_k=1), greedy)


def test_a_seeded_generator_makes_sampling_repeatable(model):
    prompt = torch.randint(0, 50, (2, 3))
    a = generate(model, prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    c = generate(model, prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_new_tokens_returns_the_prompt_and_the_mode_is_restored(model):
    model.train()
    prompt = torch.randint(0, 50, (1, 5))
    assert torch.equal(generate(model, prompt, 0), prompt)
    assert model.training
    model.eval()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_bad_arguments_are_refused(model, kwargs, message):
    args = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(UserError, match=message):
        generate(model, torch.zeros(1, 3, dtype=torch.long), **args)


def test_an_empty_or_malformed_prompt_is_refused(model):
    with pytest.raises(UserError, match="prompt is empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 5)
    with pytest.raises(UserError, match="token ids"):
        generate(model, torch.zeros(1, 3), 5)
