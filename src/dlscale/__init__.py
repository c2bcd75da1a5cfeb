"""dlscale: train deep-learning models from a laptop CPU to a GPU cluster and measure
what the hardware buys (throughput, FLOPs, MFU, compute, scaling).

    import dlscale
    result = dlscale.fit("cnn", "digits", epochs=3)
    result.summary["test_accuracy"]
    model = dlscale.load(result.run_dir)    # the trained model, its preprocessing included
    model.predict(x)
"""

from dlscale.version import __version__

__all__ = ["__version__", "fit", "FitResult", "load", "Model", "UserError"]

from dlscale.errors import UserError


def __getattr__(name):
    # Importing torch takes about a second; `dlscale --version` should not pay it.
    if name in ("fit", "FitResult"):
        from dlscale import api

        return getattr(api, name)
    if name in ("load", "Model"):
        from dlscale.inference import model

        return getattr(model, name)
    raise AttributeError(f"module 'dlscale' has no attribute {name!r}")
