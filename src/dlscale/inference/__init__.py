"""Using a trained run: ``load`` it as a ``Model`` (predict, evaluate, generate), and export it."""
