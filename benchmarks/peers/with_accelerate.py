"""Hugging Face Accelerate: the user's own loop with ``Accelerator.prepare`` and
``accelerator.backward``, as in its quick tour; CPU, no mixed precision. Data comes
through a DataLoader, which ``prepare`` wraps."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from workloads import LR, SEED, StepClock, Workload, accuracy, load, loss_of, param_groups


def run(workload: Workload, text_file: str, clock: StepClock, workdir: str) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="no")
    splits, model = load(workload, text_file)
    clock.hook_torch_optimizers()
    optimizer = torch.optim.AdamW(param_groups(model), lr=LR)
    generator = torch.Generator().manual_seed(SEED)
    loader = DataLoader(splits.train, batch_size=workload.batch_size, shuffle=True, drop_last=True,
                        generator=generator)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = workload.total_steps(len(splits.train))

    model.train()
    step, loss = 0, torch.zeros(())
    while step < total:
        for x, y in loader:
            loss = loss_of(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == total:
                break
        if workload.evaluate:
            clock.record_eval(accuracy(accelerator.unwrap_model(model), splits.val))
    return {
        "final_loss": float(loss),
        "test_accuracy": accuracy(accelerator.unwrap_model(model), splits.test) if workload.evaluate else None,
        "precision": "fp32",
    }
