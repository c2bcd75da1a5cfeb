"""Training: one entry point (train) that is a launcher or a worker, the settings resolver,
the setup, the Trainer loop and its components (checkpointer, evaluate, interval_log, summary)."""
