"""Benchmarks: training throughput (train), inference speed and latency (infer), collective
bandwidth (comm), scaling over worker counts (scaling); ``run_*`` are the commands as library calls."""
