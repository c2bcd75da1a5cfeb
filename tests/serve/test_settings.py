"""How dlscale serve decides its precision and compilation (``serve.settings``): the rule that
a lower precision must be faster and agree with fp32, the padding that keeps a compiled
model to a few batch shapes, and a real compile on the CPU answering as the eager model."""

from __future__ import annotations

import pytest
import torch

import dlscale
from dlscale.errors import UserError
from dlscale.serve import settings as serving


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("serve-settings") / "mlp"
    dlscale.fit("mlp", "digits", max_steps=20, run_dir=str(run_dir), device="cpu", precision="fp32", verbose=False)
    return run_dir


def digits(n: int) -> torch.Tensor:
    return torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(1))  # the run's input shape


def test_buckets_are_powers_of_two_up_to_and_including_the_largest_batch():
    assert serving.buckets_for(32) == (1, 2, 4, 8, 16, 32)
    assert serving.buckets_for(6) == (1, 2, 4, 6)
    assert serving.buckets_for(1) == (1,)


def test_a_batch_is_padded_to_its_bucket_and_the_padding_is_dropped(mlp_run):
    model = dlscale.load(mlp_run, device="cpu")
    seen = []
    model.module.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    bucketed = serving.ServingSettings("fp32", compiled=False, buckets=(1, 2, 4))
    x = digits(9)
    for n, shapes in ((3, [4]), (4, [4]), (1, [1]), (9, [4, 4, 4])):  # beyond the largest bucket: chunks of it
        seen.clear()
        out = serving.run_padded(model, x[:n], bucketed)
        assert seen == shapes
        assert torch.allclose(out, model.outputs_of(x[:n], prepared=True), atol=1e-6) and len(out) == n


def test_a_lower_precision_is_taken_only_when_it_is_ten_percent_faster(mlp_run, monkeypatch):
    """Timings given (the machine's own would make the test a coin toss); the agreement with
    fp32 is the model's real one."""
    for bf16_ms, expected in ((5.0, "bf16"), (9.5, "fp32")):
        model = dlscale.load(mlp_run, device="cpu")
        monkeypatch.setattr(serving, "_time", lambda m, x, ms=bf16_ms: {"fp32": 10.0, "bf16": ms}[m.precision])
        chosen = serving.resolve(model, max_batch_size=8, precision="auto", compile="auto")
        assert chosen.precision == model.precision == expected, chosen.reason
        assert not chosen.compiled and chosen.buckets is None  # a CPU never compiles on its own
        assert set(chosen.measured_ms) == {"fp32 eager, batch 8", "bf16 eager, batch 8"}
        assert ("2.00x fp32's speed" in chosen.reason) == (expected == "bf16")


def test_a_named_precision_is_kept_and_a_wrong_one_refused(mlp_run):
    model = dlscale.load(mlp_run, device="cpu")
    chosen = serving.resolve(model, 8, precision="bf16", compile="off")
    assert chosen.precision == model.precision == "bf16" and chosen.measured_ms == {}
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        serving.resolve(dlscale.load(mlp_run, device="cpu"), 8, precision="fp16", compile="off")
    with pytest.raises(UserError, match="--compile"):
        serving.resolve(dlscale.load(mlp_run, device="cpu"), 8, compile="sometimes")


def test_compile_on_compiles_every_bucket_at_start_up_and_answers_as_the_eager_model(mlp_run):
    eager = dlscale.load(mlp_run, device="cpu")
    model = dlscale.load(mlp_run, device="cpu")
    chosen = serving.resolve(model, max_batch_size=2, precision="fp32", compile="on")
    assert chosen.compiled and chosen.buckets == (1, 2) and not chosen.cuda_graphs
    assert isinstance(model.module, torch._dynamo.eval_frame.OptimizedModule)
    assert set(chosen.measured_ms) == {"fp32 eager, batch 2", "fp32 compiled, batch 2"}
    x = digits(5)
    recompiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    out = serving.run_padded(model, x, chosen)  # 2 + 2 + 1 padded to 2: shapes compiled at start-up
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == recompiles, "a request compiled a new shape"
    assert torch.allclose(out, eager.outputs_of(x, prepared=True), atol=1e-5)
