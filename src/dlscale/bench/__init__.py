"""Benchmarks: training throughput (train), inference speed and latency (infer)."""
