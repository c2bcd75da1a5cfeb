"""Using a trained run: ``load`` it as a ``Model`` (predict, evaluate, generate), and export it.

The export formats live here, not in ``export``: the command line lists them without importing torch."""

FORMATS = ("safetensors", "pt2", "onnx")
TOLERANCE = {"safetensors": 1e-4, "pt2": 1e-4, "onnx": 1e-3}  # max abs diff of fp32 outputs vs eager
