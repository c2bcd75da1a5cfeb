"""The machine: what it is (inventory, datasheet), how fast it can go (microbench, peaks), how
much memory a job may use (memory), and the figures a run reports against it (mfu, report)."""
