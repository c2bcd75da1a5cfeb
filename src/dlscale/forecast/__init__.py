"""The scaling forecast: the all-reduce cost model (model), the links it crosses (networks),
where its single-GPU speed comes from (inputs), calibration from this machine's benchmark
results (calibrate), and one forecast from a request (run)."""
