"""PyTorch Lightning's Trainer, set up as its docs suggest for a fast run: CPU, fp32
("32-true"), and no logger, checkpointing, progress bar, model summary or sanity-check
validation (each of those costs time this benchmark does not ask for). Data comes
through a DataLoader, Lightning's way of taking data."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from workloads import LR, SEED, StepClock, Workload, load, loss_of, param_groups


def run(workload: Workload, text_file: str, clock: StepClock, workdir: str) -> dict:
    import lightning as L

    splits, model = load(workload, text_file)
    clock.hook_torch_optimizers()

    class Module(L.LightningModule):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net
            self.last_loss = torch.zeros(())

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = loss_of(self.net(x), y)
            self.last_loss = loss.detach()
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            correct = (self.net(x).argmax(-1) == y).float().mean()
            self.log("val_accuracy", correct, batch_size=len(y), prog_bar=False)

        def configure_optimizers(self):
            return torch.optim.AdamW(param_groups(self.net), lr=LR)

    class RecordAccuracy(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            clock.record_eval(float(trainer.callback_metrics["val_accuracy"]))

    generator = torch.Generator().manual_seed(SEED)
    train_loader = DataLoader(splits.train, batch_size=workload.batch_size, shuffle=True, drop_last=True,
                              generator=generator)
    val_loader = DataLoader(splits.val, batch_size=512) if workload.evaluate else None
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="32-true",
        max_epochs=workload.epochs if not workload.max_steps else -1,
        max_steps=workload.max_steps or -1,
        limit_val_batches=1.0 if workload.evaluate else 0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RecordAccuracy()], default_root_dir=workdir,
    )
    module = Module(model)
    trainer.fit(module, train_loader, val_loader)
    return {
        "final_loss": float(module.last_loss),
        "test_accuracy": _test_accuracy(model, splits) if workload.evaluate else None,
        "precision": "fp32",
    }


def _test_accuracy(model, splits) -> float:
    from workloads import accuracy

    return accuracy(model, splits.test)
