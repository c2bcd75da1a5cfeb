"""Benchmarks: training throughput (train), inference speed and latency (infer), collective bandwidth (comm)."""
