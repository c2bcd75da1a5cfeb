"""The compatibility table of the settings resolver: what a forced combination is refused
with, and what "auto" may still choose under each combination."""

from __future__ import annotations

import pytest
import torch

from dlscale.errors import UserError
from dlscale.models import build_model
from dlscale.training import autotune, settings
from dlscale.training.settings import Combination, auto_channels_last, refuse_incompatible


@pytest.mark.parametrize("combination, message", [
    (Combination("fsdp", 2, "cpu", "fp32", True), "--channels-last with --strategy fsdp on 2 workers"),
    (Combination("fsdp", 8, "cuda", "bf16", True), "--channels-last with --strategy fsdp on 8 workers"),
    (Combination("ddp", 1, "cpu", "fp16", None), "--precision fp16 needs a GPU (cpu"),
    (Combination("ddp", 2, "mps", "auto", None), "--device mps with 2 workers"),
])
def test_a_forced_combination_that_cannot_run_is_refused_saying_why(combination, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        refuse_incompatible(combination)


@pytest.mark.parametrize("combination", [
    Combination("fsdp", 1, "cpu", "fp32", True),  # one worker: nothing is sharded
    Combination("fsdp", 2, "cpu", "bf16", False),
    Combination("fsdp", 2, "cpu", "auto", None),
    Combination("ddp", 2, "cpu", "bf16", True),
    Combination("ddp", 1, "cuda", "fp16", True),
])
def test_combinations_that_run_pass(combination):
    refuse_incompatible(combination)


def test_auto_never_picks_channels_last_under_sharding():
    assert auto_channels_last("fsdp", 2, None) is False
    assert auto_channels_last("fsdp", 1, None) is None and auto_channels_last("ddp", 2, None) is None
    assert auto_channels_last("ddp", 2, True) is True  # what the user forced is kept (refused elsewhere if wrong)


def test_the_cpu_probe_is_not_offered_channels_last_under_fsdp(monkeypatch):
    """The reported failure: the probe picked channels_last for a conv net and FSDP2 then
    refused its weights. Under FSDP on several workers it may only try NCHW."""
    offered = {}

    def choose(model, x, y, *, key, precision, channels_last, conv):
        offered["channels_last"] = channels_last
        return autotune.Choice(precision if precision != "auto" else "fp32", bool(channels_last), {}, cached=False)

    monkeypatch.setattr(autotune, "choose_cpu_settings", choose)
    model = build_model("cnn", (1, 8, 8), 10)
    probe = (torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    chosen = settings.resolve(torch.device("cpu"), model, probe, key="cnn", strategy="fsdp", world=2)
    assert offered["channels_last"] is False and chosen.channels_last is False
    settings.resolve(torch.device("cpu"), model, probe, key="cnn", strategy="ddp", world=2)
    assert offered["channels_last"] is None  # under DDP the probe still measures both layouts
