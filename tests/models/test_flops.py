import torch

from dlscale.models.flops import count
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


def test_resnet50_at_224_matches_the_published_figures():
    """About 4.1 G multiply-adds forward = 8.2 GFLOPs, about 3x that per trained image (within 5%)."""
    model = build_model("resnet50", (3, 224, 224), 1000)
    got = count(model, torch.randn(2, 3, 224, 224), torch.zeros(2, dtype=torch.long))
    assert abs(got.forward_per_sample / 8.2e9 - 1) < 0.05
    assert abs(got.train_per_sample / 24.6e9 - 1) < 0.05


def gpt_oracle_per_token(model, seq_len: int) -> float:
    """6N + 12·L·d·T, N counting every weight that takes part in a matmul (position embeddings do not)."""
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    return 6 * n + 12 * model.n_layer * model.n_embd * seq_len


def test_gpt_training_flops_per_token_match_6n_plus_attention():
    for name, seq_len, vocab in (("gpt-small", 1024, 50257), ("gpt-tiny", 64, 256)):
        model = build_model(name, (seq_len,), vocab)
        tokens = torch.zeros(2, seq_len, dtype=torch.long)
        got = count(model, tokens, tokens).train_per_sample / seq_len
        assert abs(got / gpt_oracle_per_token(model, seq_len) - 1) < 0.05, name
