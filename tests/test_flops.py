import torch

from dlscale.flops import count
from dlscale.models import build_model


def test_mlp_flops_match_the_matmul_formula_exactly():
    model = build_model("mlp", (1, 8, 8), 10)  # 64 -> 256 -> 256 -> 10
    layers = [(64, 256), (256, 256), (256, 10)]
    forward = sum(2 * i * o for i, o in layers)
    # backward: weight gradients cost the forward again; input gradients for all but the first layer
    backward = forward + sum(2 * i * o for i, o in layers[1:])
    got = count(model, torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert got.forward_per_sample == forward
    assert got.train_per_sample == forward + backward


def test_counting_leaves_the_real_model_untouched():
    model = build_model("cnn", (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count(model, torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_language_model_counts_per_sequence():
    model = build_model("gpt-tiny", (64,), 256)
    got = count(model, torch.zeros(2, 64, dtype=torch.long), torch.zeros(2, 64, dtype=torch.long))
    assert got.train_per_sample > 2 * got.forward_per_sample > 0
