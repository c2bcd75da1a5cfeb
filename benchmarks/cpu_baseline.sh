#!/usr/bin/env bash
# The CPU baseline: dlscale's own benchmarks on this machine, each result kept as JSON
# (with its provenance: command, versions, date, commit) under benchmarks/results/.
#
#   bash benchmarks/cpu_baseline.sh            # writes benchmarks/results/cpu-<date>/
#
# Run it on a quiet machine: these machines are shared and noisy, so every bench reports
# the median and spread of repeats; compare settings only within one run of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
out="benchmarks/results/cpu-$(date -u +%Y-%m-%d)"
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

run() {  # run NAME dlscale-args...: keep the --json object of one command
    local name=$1; shift
    echo "== $name: dlscale $*" >&2
    dlscale "$@" --json --run-dir "$scratch/$name" | tail -n 1 > "$out/$name.json"
}

dlscale hw --remeasure --json | tail -n 1 > "$out/hw.json"
run train-cnn-digits-fp32      bench train --model cnn --batch-size 64 --precision fp32 --steps 50 --repeats 5
run train-cnn-digits-bf16      bench train --model cnn --batch-size 64 --precision bf16 --steps 50 --repeats 5
run train-resnet18-32-fp32     bench train --model resnet18 --data synthetic:3x32x32 --batch-size 128 --precision fp32 --steps 4 --repeats 3
run train-resnet18-32-bf16     bench train --model resnet18 --data synthetic:3x32x32 --batch-size 128 --precision bf16 --steps 4 --repeats 3
run train-gpt-tiny-fp32        bench train --model gpt-tiny --batch-size 32 --precision fp32 --steps 20 --repeats 5
run train-gpt-tiny-bf16        bench train --model gpt-tiny --batch-size 32 --precision bf16 --steps 20 --repeats 5
run infer-cnn                  bench infer --model cnn --batch-sizes 1,64,256 --precisions fp32,bf16,int8
run infer-resnet18-32          bench infer --model resnet18 --input-shape 3x32x32 --batch-sizes 1,32 --precisions fp32,bf16
echo "results in $out" >&2
