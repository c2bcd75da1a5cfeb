"""The reference: the minimal hand-written PyTorch loop a user would write themselves.
Tensors stay in memory; each epoch a seeded permutation picks the batches."""

from __future__ import annotations

import torch

from workloads import LR, SEED, StepClock, Workload, accuracy, load, loss_of, param_groups


def run(workload: Workload, text_file: str, clock: StepClock, workdir: str) -> dict:
    splits, model = load(workload, text_file)
    clock.hook_torch_optimizers()
    optimizer = torch.optim.AdamW(param_groups(model), lr=LR)
    x, y = splits.train.tensors
    batch = workload.batch_size
    steps_per_epoch = workload.steps_per_epoch(len(y))
    total = workload.total_steps(len(y))
    generator = torch.Generator().manual_seed(SEED)

    model.train()
    step, loss = 0, torch.zeros(())
    while step < total:
        order = torch.randperm(len(y), generator=generator)
        for i in range(steps_per_epoch):
            index = order[i * batch:(i + 1) * batch]
            loss = loss_of(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == total:
                break
        if workload.evaluate:
            clock.record_eval(accuracy(model, splits.val))
    return {
        "final_loss": float(loss),
        "test_accuracy": accuracy(model, splits.test) if workload.evaluate else None,
        "precision": "fp32",
    }
