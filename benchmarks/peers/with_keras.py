"""Keras 3 on its torch backend, ``model.fit`` on NumPy arrays. The very same torch
module is wrapped in ``keras.layers.TorchModuleWrapper`` (the Keras way to train a torch
module), so the model and its initial weights match the other frameworks; the optimizer
is Keras' AdamW with torch's epsilon and the same decay exclusions."""

from __future__ import annotations

import os

from workloads import LR, SEED, WEIGHT_DECAY, StepClock, Workload, accuracy, load

os.environ.setdefault("KERAS_BACKEND", "torch")


def run(workload: Workload, text_file: str, clock: StepClock, workdir: str) -> dict:
    import keras

    splits, module = load(workload, text_file)

    class Wrapped(keras.Model):
        def __init__(self, net):
            super().__init__()
            self.body = keras.layers.TorchModuleWrapper(net)

        def call(self, x, training=None):
            return self.body(x, training=training)

    class Tick(keras.callbacks.Callback):
        """A tick after every optimizer step, and the same validation accuracy as every
        other framework after every epoch (Keras' own metrics would also score every
        training batch, work the others do not do)."""

        def on_train_batch_end(self, batch, logs=None):
            clock.tick()

        def on_epoch_end(self, epoch, logs=None):
            if workload.evaluate:
                clock.record_eval(accuracy(module, splits.val))

    x, y = (t.numpy() for t in splits.train.tensors)
    model = Wrapped(module)
    model(splits.train.tensors[0][:2], training=False)  # builds the variables; eval mode leaves BatchNorm statistics alone
    optimizer = keras.optimizers.AdamW(learning_rate=LR, weight_decay=WEIGHT_DECAY, epsilon=1e-8)
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps_per_epoch = workload.max_steps or workload.steps_per_epoch(len(y))
    batches = _Batches(keras, x, y, workload.batch_size, steps_per_epoch)
    history = model.fit(batches, epochs=workload.epochs, callbacks=[Tick()], verbose=0)
    return {
        "final_loss": float(history.history["loss"][-1]),
        "test_accuracy": accuracy(module, splits.test) if workload.evaluate else None,
        "precision": "fp32",
    }



def _Batches(keras, x, y, batch_size: int, steps: int):
    """Exactly ``steps`` full batches an epoch from a fresh permutation, the last partial
    batch dropped as everywhere else. (NumPy arrays with ``steps_per_epoch`` do not do
    this: Keras runs out of data after the first epoch and stops early, 100 steps instead
    of 190 for cnn-digits.)"""
    import numpy as np

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(SEED)
            self.on_epoch_end()

        def __len__(self):
            return steps

        def __getitem__(self, i):
            index = self.order[i * batch_size:(i + 1) * batch_size]
            return x[index], y[index]

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(y))

    return Batches()
