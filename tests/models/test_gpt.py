"""GPT: causal masking, context limit, weight tying, and the GPT-2 124M shape."""

import pytest
import torch
import torch.nn.functional as F

from dlscale.errors import UserError
from dlscale.models import build_model


@pytest.fixture(scope="module")
def gpt_small():
    torch.manual_seed(0)
    return build_model("gpt-small", (1024,), 50257).eval()


def test_gpt_small_is_gpt2_124m(gpt_small):
    assert sum(p.numel() for p in gpt_small.parameters()) == 124_439_808
    assert (gpt_small.n_layer, gpt_small.n_embd, gpt_small.block_size) == (12, 768, 1024)
    assert gpt_small.n_head == 12


def test_gpt_small_forward_on_a_short_sequence(gpt_small):
    with torch.no_grad():
        logits = gpt_small(torch.randint(0, 50257, (1, 8)))
    assert logits.shape == (1, 8, 50257)


def test_output_weight_is_tied_to_token_embedding(gpt_small):
    assert gpt_small.lm_head.weight is gpt_small.wte.weight


def test_vocabulary_and_context_come_from_the_data():
    model = build_model("gpt-tiny", (32,), 100)
    assert model.block_size == 32 and model.vocab_size == 100
    assert (model.n_layer, model.n_embd) == (2, 64)
    assert model(torch.randint(0, 100, (3, 32))).shape == (3, 32, 100)


def test_changing_a_future_token_leaves_earlier_logits_alone():
    torch.manual_seed(0)
    model = build_model("gpt-tiny", (16,), 256).eval()
    x = torch.randint(0, 256, (2, 16))
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % 256
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_sequence_longer_than_context_is_refused():
    model = build_model("gpt-tiny", (16,), 256)
    with pytest.raises(UserError, match="context is 16"):
        model(torch.randint(0, 256, (1, 17)))


def test_gpt_tiny_learns_a_repeating_sequence():
    torch.manual_seed(0)
    model = build_model("gpt-tiny", (32,), 256)
    data = torch.arange(33).repeat(8, 1) % 7  # next token is predictable from the previous one
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
