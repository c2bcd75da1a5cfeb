"""``dlscale forecast``: the alpha-beta ring formula by hand, monotonic behaviour, the presets'
sources, the command's contract, and the VALIDATION TABLE against published scaling results
(Goyal et al. 2017; Horovod), each prediction with its error; target |error| <= 0.10."""

import json

import pytest

from dlscale.errors import UserError
from dlscale.cli import main
from dlscale.cli.forecast import forecast_option_strings
from dlscale.forecast.model import allreduce_parts, predict, ring_allreduce_time
from dlscale.forecast.networks import NETWORKS, Network


# --------------------------------------------------------------------------- the formula


def test_ring_allreduce_matches_hand_numbers():
    # 100 MB over 4 ranks at 10 GB/s, 10 us: 2*3/4 * 0.01 s = 15 ms, + 6 * 10 us = 60 us
    assert ring_allreduce_time(100e6, 4, 10e9, 10e-6) == pytest.approx(0.015 + 0.00006)
    # 2 ranks: 2*1/2 * S/B = S/B, + 2 latencies
    assert ring_allreduce_time(1e9, 2, 1e9, 1e-6) == pytest.approx(1.0 + 2e-6)
    assert ring_allreduce_time(1e9, 1, 1e9, 1e-6) == 0.0


def test_hierarchical_allreduce_by_hand():
    intra = Network("i", 100e9, 1e-6, "test", "intra")
    inter = Network("e", 10e9, 10e-6, "test", "inter")
    s = 80e6
    # one node of 4: a flat ring over the intra link
    assert sum(allreduce_parts(s, 4, 8, intra, inter)) == pytest.approx(ring_allreduce_time(s, 4, 100e9, 1e-6))
    # 4 nodes of 8: intra RS+AG 2*7/8*S/B_i, 14 latencies; inter 2*3/4*S/B_node, 6 latencies
    ib, il, eb, el = allreduce_parts(s, 32, 8, intra, inter)
    assert ib == pytest.approx(2 * 7 / 8 * s / 100e9) and il == pytest.approx(14e-6)
    assert eb == pytest.approx(2 * 3 / 4 * s / 10e9) and el == pytest.approx(60e-6)
    # two NICs per node halve the inter-node bandwidth term
    assert allreduce_parts(s, 32, 8, intra, inter, nics_per_node=2)[2] == pytest.approx(eb / 2)


def test_several_nodes_pipeline_the_two_shares_and_add_the_latencies():
    """NCCL's ring moves chunks through the NVLink and the NIC hops at once: a step's
    communication is the slower share plus every latency term, not the sum of the shares."""
    rows = _rows(gpus_list=[1, 64], inter=NETWORKS["eth-10g"], overlap=0.0, bucket_bytes=1e12)
    ib, il, eb, el = allreduce_parts(25_557_032 * 4, 64, 8, NETWORKS["nvlink3"], NETWORKS["eth-10g"])
    assert eb > ib
    assert rows[1]["comm_s"] == pytest.approx(max(ib, eb) + il + el, rel=1e-6)


def _rows(**kw):
    args = dict(params=25_557_032, flops_per_sample=24.6e9, per_gpu_batch=32, single_throughput=1000.0,
                gpus_list=[1, 8, 64, 512], gpus_per_node=8, intra=NETWORKS["nvlink3"], inter=NETWORKS["ib-edr"])
    args.update(kw)
    return predict(**args)


def test_one_gpu_is_efficiency_one_and_rows_are_consistent():
    rows = _rows()
    assert rows[0]["efficiency"] == pytest.approx(1.0) and rows[0]["speedup"] == pytest.approx(1.0)
    assert rows[0]["comm_s"] == 0 and rows[0]["comm_exposed_s"] == 0 and rows[0]["nodes"] == 1
    for r in rows:
        assert {"gpus", "nodes", "step_time_s", "samples_per_second", "speedup", "efficiency",
                "comm_s", "comm_exposed_s"} <= set(r)
        assert r["samples_per_second"] == pytest.approx(r["gpus"] * 32 / r["step_time_s"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["gpus"])
        assert 0 <= r["comm_exposed_s"] <= r["comm_s"] + 1e-12
        assert 0 < r["efficiency"] <= 1
    assert [r["nodes"] for r in rows] == [1, 1, 8, 64]
    effs = [r["efficiency"] for r in rows]
    assert effs == sorted(effs, reverse=True)  # more GPUs, lower efficiency


def test_more_bandwidth_gives_higher_efficiency():
    slow = _rows(inter=NETWORKS["eth-10g"])[-1]["efficiency"]
    mid = _rows(inter=NETWORKS["ib-edr"])[-1]["efficiency"]
    fast = _rows(inter=NETWORKS["ib-ndr"])[-1]["efficiency"]
    assert slow < mid <= fast
    # half-size (bf16) gradients cost less time than fp32
    assert _rows(inter=NETWORKS["eth-10g"], grad_bytes_per_param=2)[-1]["efficiency"] > slow
    # no overlap exposes more communication
    assert _rows(inter=NETWORKS["eth-10g"], overlap=0.0)[-1]["efficiency"] < slow


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="whole nodes"):
        _rows(gpus_list=[12])
    with pytest.raises(UserError):
        _rows(single_throughput=0)


def test_presets_cover_the_issue_and_all_have_sources():
    required = {"nvlink2", "nvlink3", "nvlink4", "pcie3", "pcie4", "pcie5", "ib-fdr", "ib-edr", "ib-hdr",
                "ib-ndr", "eth-10g", "eth-25g", "eth-100g"}
    assert required <= set(NETWORKS)
    for name, net in NETWORKS.items():
        assert net.name == name and net.scope in {"intra", "inter"}
        assert net.bandwidth > 1e8 and 0 < net.latency < 1e-3
        assert len(net.source) > 40 and "GB/s" in net.source and "latency" in net.source
    # achievable never above the line rate: IB EDR 100 Gb/s = 12.5 GB/s
    assert NETWORKS["ib-edr"].bandwidth <= 12.5e9 and NETWORKS["eth-25g"].bandwidth <= 3.125e9


# --------------------------------------------------------------------------- the command


def test_command_json_is_one_object_last(capsys):
    assert main(["forecast", "--model", "resnet50", "--gpus", "1,8,64", "--network", "ib-edr",
                 "--single-throughput", "1200", "--json"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[-1])
    assert "provenance" in obj and [r["gpus"] for r in obj["results"]] == [1, 8, 64]
    assert obj["gpus"] == 1 and obj["efficiency"] == 1.0  # first row repeated flat
    assert obj["inputs"]["params"] == 25_557_032
    assert 20e9 < obj["inputs"]["flops_per_sample"] < 30e9  # ~24.6 GFLOPs per trained image
    assert obj["inputs"]["inter_network"]["name"] == "ib-edr" and obj["inputs"]["intra_network"]["name"] == "nvlink3"
    assert "forecast weak scaling" in err and "speedup" in err and "1200 samples/s" in err


def test_command_device_mfu_and_overrides(capsys):
    assert main(["forecast", "--params", "1000000", "--flops-per-sample", "1e9", "--device", "NVIDIA A100-SXM4-80GB",
                 "--mfu", "0.5", "--precision", "bf16", "--gpus", "1,16", "--bandwidth", "5", "--latency", "20",
                 "--json"]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert obj["inputs"]["single_throughput"] == pytest.approx(312e12 * 0.5 / 1e9)
    assert obj["inputs"]["inter_network"]["bandwidth"] == 5e9
    assert obj["inputs"]["inter_network"]["latency"] == pytest.approx(20e-6)


@pytest.mark.parametrize("argv, message", [
    (["--params", "1000000", "--gpus", "1,8"], "single-GPU speed"),
    (["--model", "nope", "--single-throughput", "10"], "unknown model"),
    (["--model", "resnet50", "--single-throughput", "10", "--network", "carrier-pigeon"], "unknown network"),
    (["--model", "resnet50", "--single-throughput", "10", "--gpus", "1,x"], "--gpus"),
    (["--model", "resnet50", "--single-throughput", "10", "--gpus", "12"], "whole nodes"),
    (["--model", "resnet50", "--device", "NoSuchGPU", "--gpus", "8"], "datasheet peak"),
    (["--single-throughput", "10"], "--model"),
    (["--model", "resnet50", "--single-throughput", "10", "--grad-accum", "0"], "--grad-accum"),
    (["--model", "resnet50", "--single-throughput", "10", "--input-rate", "0"], "--input-rate"),
])
def test_user_mistakes_are_one_error_line(capsys, argv, message):
    assert main(["forecast", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_command_input_rate_and_accumulation(capsys):
    assert main(["forecast", "--model", "resnet50", "--batch-size", "256", "--single-throughput", "2470",
                 "--gpus", "1,8", "--input-rate", "16000", "--grad-accum", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    obj = json.loads(out.strip().splitlines()[-1])
    eight = obj["results"][1]
    assert eight["input_bound"] is True and eight["samples_per_second"] == pytest.approx(16000)
    assert obj["inputs"]["grad_accum"] == 2 and obj["inputs"]["grad_precision"] == "fp32"
    assert "input-bound at 8 GPUs" in err


def test_the_design_contract_command_measures_the_speed_when_none_is_given(capsys):
    assert main(["forecast", "--model", "mlp", "--gpus", "1,8", "--network", "ib-edr", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert obj["inputs"]["single_throughput_source"].startswith("measured now on cpu")
    assert obj["inputs"]["single_throughput"] > 0 and [r["gpus"] for r in obj["results"]] == [1, 8]


def test_help_states_the_assumptions(capsys):
    with pytest.raises(SystemExit):
        main(["forecast", "--help"])
    out = capsys.readouterr().out
    assert "assumptions:" in out and "weak scaling" in out and "2(N-1)/N" in out and "hierarchical" in out


def test_forecast_help_exits_0_and_lists_its_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["forecast", "--help"])
    assert exited.value.code == 0
    assert "--gpus" in capsys.readouterr().out


def test_forecast_option_strings_are_read_from_the_parser():
    """What a command given forecast's flags by mistake checks against (``dlscale predict``)."""
    flags = forecast_option_strings()
    assert {"--gpus", "--network", "--single-throughput", "--calibrate-scaling"} <= flags
    assert "--help" not in flags


def test_list_networks(capsys):
    assert main(["forecast", "--list-networks"]) == 0
    err = capsys.readouterr().err
    assert "ib-ndr" in err and "nvlink4" in err


# --------------------------------------------------------------------------- validation table
#
# Published data-parallel scaling results vs the model's prediction with its DEFAULT constants
# (no per-row tuning). Each row gives what the source states about its run: parameters, the
# per-GPU micro-batch, one GPU's throughput, GPUs per server, the links, the gradients' element
# size, the micro-steps per all-reduce (gradient accumulation) at the baseline and at N, and
# whether the gradients are all-reduced after the backward pass instead of during it.
#
# 2017-2018 (Pascal): single-GPU throughputs from TensorFlow's "Benchmarks" page
# (tensorflow.org/performance/benchmarks, May 2017, DGX-1 P100, tf_cnn_benchmarks, synthetic
# data): ResNet-50 195 img/s at batch 32; at batch 64 InceptionV3 142, VGG16 154, ResNet-152
# 91.8 img/s. ResNet-101's 129 img/s is DERIVED by interpolating time per image in forward FLOPs
# between ResNet-50 (4.1 GMAC, 219 img/s at batch 64) and ResNet-152 (11.5 GMAC, 91.8 img/s) at
# 7.8 GMAC. Horovod's per-GPU batch is ASSUMED 64 (tf_cnn_benchmarks' P100 setting), its
# intra-server link ASSUMED PCIe 3 (4 Pascal GPUs per server), its 25 Gbit/s RoCE as eth-25g.
# Goyal et al.'s Big Basin servers: 8 P100 with NVLink 1.0 (nvlink1), 50 Gbit/s Ethernet.
#
# 2020-2021 (A100, V100): NVIDIA DeepLearningExamples (DLE) READMEs, "Training performance"
# tables, each row the throughput at 1 and N GPUs (or 1 and N nodes) with the per-GPU batch
# of the README or its configs. Links: DGX A100 = 8 A100 on NVLink 3 (nvlink3) and, between
# nodes, 8 HDR InfiniBand NICs per node (ib-hdr x 8; the READMEs do not name the cluster's
# fabric: ASSUMED from the DGX A100 datasheet); DGX-1V = 8 V100 on NVLink 2 (nvlink2).
# Parameter counts from the models' papers: ResNeXt-101 32x4d 44.2M (Xie et al. 2017),
# SE-ResNeXt-101 32x4d 49.0M (Hu et al. 2018), EfficientNet-B4 19M (Tan & Le 2019), BERT-large
# 340M (Devlin et al. 2019). DLE's BERT pretraining all-reduces after gradient accumulation
# (run_pretraining's allreduce_post_accumulation, fp16 gradients with AMP), so nothing overlaps
# (overlap 0), and its multi-node table keeps the global batch: accumulation drops with nodes.
#
# Published efficiencies are ranges where the source gives ranges (Horovod); the error is the
# distance from the prediction to the range (0 inside it).

RESNET50_PARAMS = 25_557_032  # the zoo's resnet50 (torchvision's count)
DLE = "NVIDIA/DeepLearningExamples, PyTorch/"
HOROVOD = "Sergeev & Del Balso 2018 / Horovod docs: ~88-90% at 128 and 512 Pascal GPUs, 25 Gbit/s RoCE"


def case(name, params, batch, single, per_node, intra, inter, gpus, base, published, source,
         nics=1, grad_bytes=4, accum=(1, 1), overlap=None):
    return dict(name=name, params=params, batch=batch, single=single, per_node=per_node, intra=intra, inter=inter,
                gpus=gpus, base=base, published=published, source=source, nics=nics, grad_bytes=grad_bytes,
                accum=accum, overlap=overlap)


VALIDATION = [
    case("Goyal 2017 ResNet-50", RESNET50_PARAMS, 32, 195.0, 8, "nvlink1", "eth-50g", 256, 8, (0.90, 0.90),
         "Goyal et al. 2017, arXiv:1706.02677: ~90% scaling efficiency from 8 to 256 P100 GPUs"),
    case("Horovod ResNet-101", 44_500_000, 64, 129.0, 4, "pcie3", "eth-25g", 128, 1, (0.88, 0.90), HOROVOD),
    case("Horovod ResNet-101", 44_500_000, 64, 129.0, 4, "pcie3", "eth-25g", 512, 1, (0.88, 0.90), HOROVOD),
    case("Horovod Inception V3", 23_800_000, 64, 142.0, 4, "pcie3", "eth-25g", 128, 1, (0.88, 0.90), HOROVOD),
    case("Horovod Inception V3", 23_800_000, 64, 142.0, 4, "pcie3", "eth-25g", 512, 1, (0.88, 0.90), HOROVOD),
    case("Horovod VGG-16", 138_000_000, 64, 154.0, 4, "pcie3", "eth-25g", 128, 1, (0.68, 0.79),
         "Sergeev & Del Balso 2018 / Horovod docs: 68-79% for VGG-16"),
    case("Horovod VGG-16", 138_000_000, 64, 154.0, 4, "pcie3", "eth-25g", 512, 1, (0.68, 0.79),
         "Sergeev & Del Balso 2018 / Horovod docs: 68-79% for VGG-16 (68% at 512 GPUs, Horovod README)"),
    case("DLE ResNet-50 TF32 A100", RESNET50_PARAMS, 256, 938.0, 8, "nvlink3", "ib-hdr", 8, 1, (0.966, 0.966),
         DLE + "Classification/ConvNets/resnet50v1.5/README.md @291f0d0, DGX A100 (8x A100 80GB): 938 -> 7,248 img/s",
         nics=8),
    case("DLE ResNet-50 FP32 V100", RESNET50_PARAMS, 112, 367.0, 8, "nvlink2", "ib-edr", 8, 1, (0.972, 0.972),
         DLE + "Classification/ConvNets/resnet50v1.5/README.md @291f0d0, DGX-1 16GB (8x V100): 367 -> 2,855 img/s"),
    case("DLE ResNeXt-101 TF32 A100", 44_200_000, 128, 456.0, 8, "nvlink3", "ib-hdr", 8, 1, (0.951, 0.951),
         DLE + "Classification/ConvNets/resnext101-32x4d/README.md @48dc9ad, DGX A100: 456 -> 3,471 img/s", nics=8),
    case("DLE SE-ResNeXt-101 TF32 A100", 49_000_000, 128, 395.0, 8, "nvlink3", "ib-hdr", 8, 1, (0.947, 0.947),
         DLE + "Classification/ConvNets/se-resnext101-32x4d/README.md @0107cf2, DGX A100: 395 -> 2,991 img/s", nics=8),
    case("DLE EfficientNet-B4 TF32", 19_300_000, 64, 157.0, 8, "nvlink3", "ib-hdr", 32, 1, (0.958, 0.958),
         DLE + "Classification/ConvNets/efficientnet/README.md @48dc9ad, A100 80GB: 157 -> 4,813 img/s on 32 GPUs",
         nics=8),
    case("DLE EfficientNet-B4 TF32", 19_300_000, 64, 157.0, 8, "nvlink3", "ib-hdr", 64, 1, (0.910, 0.910),
         DLE + "Classification/ConvNets/efficientnet/README.md @48dc9ad, A100 80GB: 157 -> 9,146 img/s on 64 GPUs",
         nics=8),
    case("DLE BERT-large ph1 AMP", 340_000_000, 256, 4553 / 8, 8, "nvlink3", "ib-hdr", 256, 8, (0.949, 0.949),
         DLE + "LanguageModeling/BERT/README.md @1c7f613, multi-node DGX A100: 4,553 -> 138,294 seq/s, 1 -> 32 nodes",
         nics=8, grad_bytes=2, accum=(32, 1), overlap=0.0),
    case("DLE BERT-large ph2 AMP", 340_000_000, 32, 1648 / 8, 8, "nvlink3", "ib-hdr", 256, 8, (0.942, 0.942),
         DLE + "LanguageModeling/BERT/README.md @1c7f613, multi-node DGX A100: 1,648 -> 49,663 seq/s, 1 -> 32 nodes",
         nics=8, grad_bytes=2, accum=(128, 4), overlap=0.0),
    case("DLE BERT-large ph1 TF32", 340_000_000, 128, 2486 / 8, 8, "nvlink3", "ib-hdr", 256, 8, (0.952, 0.952),
         DLE + "LanguageModeling/BERT/README.md @1c7f613, multi-node DGX A100: 2,486 -> 75,706 seq/s, 1 -> 32 nodes",
         nics=8, accum=(64, 2), overlap=0.0),
    # The cases below are published too, and the model does not meet them (KNOWN_MISSES says why).
    case("DLE BERT-large ph2 TF32", 340_000_000, 16, 854 / 8, 8, "nvlink3", "ib-hdr", 256, 8, (0.779, 0.779),
         DLE + "LanguageModeling/BERT/README.md @1c7f613, multi-node DGX A100: 854 -> 21,298 seq/s, 1 -> 32 nodes",
         nics=8, accum=(256, 8), overlap=0.0),
    case("DLE ResNet-50 AMP A100", RESNET50_PARAMS, 256, 2470.0, 8, "nvlink3", "ib-hdr", 8, 1, (0.841, 0.841),
         DLE + "Classification/ConvNets/resnet50v1.5/README.md @291f0d0, DGX A100: 2,470 -> 16,621 img/s", nics=8),
    case("DLE ResNet-50 AMP V100", RESNET50_PARAMS, 256, 1200.0, 8, "nvlink2", "ib-edr", 8, 1, (0.867, 0.867),
         DLE + "Classification/ConvNets/resnet50v1.5/README.md @291f0d0, DGX-1 16GB: 1,200 -> 8,322 img/s"),
    case("DLE ResNeXt-101 AMP A100", 44_200_000, 128, 1211.0, 8, "nvlink3", "ib-hdr", 8, 1, (0.818, 0.818),
         DLE + "Classification/ConvNets/resnext101-32x4d/README.md @48dc9ad, DGX A100: 1,211 -> 7,925 img/s", nics=8),
    case("DLE SE-ResNeXt-101 AMP A100", 49_000_000, 128, 855.0, 8, "nvlink3", "ib-hdr", 8, 1, (0.845, 0.845),
         DLE + "Classification/ConvNets/se-resnext101-32x4d/README.md @0107cf2, DGX A100: 855 -> 5,779 img/s", nics=8),
]

_INPUT_BOUND = ("input-bound, not communication-bound: the same table's TF32 run, with the same 4-byte gradients "
                "over the same links, scales at 0.95-0.97, and the all-reduce is about 1% of the step; the AMP run "
                "needs 2.6x the images per second from the same CPUs (DLE's EfficientNet README: training is "
                "'CPU-bound' by augmentation). The model is right only given the node's loader rate "
                "(--input-rate, measured by 'dlscale bench data'), which the source does not publish")

# Rows the model cannot honestly meet (name, gpus) -> reason; each becomes xfail(strict=True).
KNOWN_MISSES: dict[tuple[str, int], str] = {
    ("DLE BERT-large ph2 TF32", 256): (
        "unexplained: the AMP run of the same table (same model, links and accumulation scheme) scales at 0.942 "
        "and the model's communication is 13 ms of a 1.2 s step; the source gives no profile"),
    ("DLE ResNet-50 AMP A100", 8): _INPUT_BOUND,
    ("DLE ResNet-50 AMP V100", 8): _INPUT_BOUND,
    ("DLE ResNeXt-101 AMP A100", 8): _INPUT_BOUND,
    ("DLE SE-ResNeXt-101 AMP A100", 8): _INPUT_BOUND,
}

TOLERANCE = 0.05


def _predicted(row, **knobs) -> float:
    """Predicted efficiency at the row's GPU count relative to its baseline count, each with its
    own accumulation (the throughputs' ratio over the GPU counts' ratio)."""
    if row["overlap"] is not None:
        knobs.setdefault("overlap", row["overlap"])

    def rate(gpus, accum):
        return predict(row["params"], None, row["batch"], row["single"], [gpus], row["per_node"],
                       NETWORKS[row["intra"]], NETWORKS[row["inter"]], grad_bytes_per_param=row["grad_bytes"],
                       nics_per_node=row["nics"], grad_accum=accum, **knobs)[0]["samples_per_second"]

    base_accum, accum = row["accum"]
    return (rate(row["gpus"], accum) / row["gpus"]) / (rate(row["base"], base_accum) / row["base"])


def _error(predicted: float, published: tuple[float, float]) -> float:
    low, high = published
    return 0.0 if low <= predicted <= high else min(abs(predicted - low), abs(predicted - high))


def test_print_validation_table(capsys):
    lines = [f"{'case':30} {'GPUs':>5} {'vs':>3} {'published':>10} {'predicted':>9} {'error':>6}  source"]
    for row in VALIDATION:
        p = _predicted(row)
        low, high = row["published"]
        pub = f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"
        miss = " (known miss)" if (row["name"], row["gpus"]) in KNOWN_MISSES else ""
        lines.append(f"{row['name']:30} {row['gpus']:>5} {row['base']:>3} {pub:>10} {p:>9.3f} "
                     f"{_error(p, row['published']):>6.3f}  {row['source']}{miss}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.parametrize("row", [
    pytest.param(r, id=f"{r['name']}@{r['gpus']}",
                 marks=[pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[(r["name"], r["gpus"])])]
                 if (r["name"], r["gpus"]) in KNOWN_MISSES else [])
    for r in VALIDATION
])
def test_prediction_within_tolerance_of_published(row):
    p = _predicted(row)
    assert _error(p, row["published"]) <= TOLERANCE, \
        f"{row['name']} at {row['gpus']} GPUs: predicted {p:.3f}, published {row['published']}"


def test_the_input_bound_cases_are_met_once_the_loader_rate_is_known():
    """The AMP ImageNet runs miss on communication alone; given a node loader rate they are
    input-bound, and the efficiency is that rate over what the GPUs could train."""
    row = next(r for r in VALIDATION if r["name"] == "DLE ResNet-50 AMP A100")
    assert _predicted(row) > 0.9  # communication alone: optimistic
    bound = _predicted(row, input_rate=16_000.0)
    assert bound == pytest.approx(16_000 / (8 * 2470.0), rel=1e-6)


def test_amp_keeps_fp32_gradients_and_accumulation_amortises_the_all_reduce():
    # 16 nodes of 8 GPUs on 10 GbE: communication-bound
    fp32 = _rows(inter=NETWORKS["eth-10g"])[-1]
    half = _rows(inter=NETWORKS["eth-10g"], grad_bytes_per_param=2)[-1]
    assert half["comm_s"] == pytest.approx(fp32["comm_s"] / 2, rel=0.05)
    accumulated = _rows(inter=NETWORKS["eth-10g"], grad_accum=4)[-1]
    assert accumulated["comm_s"] == pytest.approx(fp32["comm_s"])  # one all-reduce per optimizer step
    assert accumulated["efficiency"] > fp32["efficiency"]
    assert accumulated["samples_per_second"] == pytest.approx(
        accumulated["gpus"] * 4 * 32 / accumulated["step_time_s"])


def test_ddp_buckets_and_their_timeline_by_hand():
    from dlscale.forecast.model import bucket_sizes, exposed_communication

    mib = 2**20
    assert bucket_sizes(60 * mib) == [mib, 25 * mib, 25 * mib, 9 * mib]
    assert bucket_sizes(0.5 * mib) == [0.5 * mib]
    # 4 buckets of 10 s each over a 40 s backward, gradients evenly ready: each bucket is ready
    # when the one before is done, the last is ready at 40 s and ends at 50 s; latency 1 s
    comm, exposed = exposed_communication([1.0] * 4, 40.0, 1.0, lambda size: 10.0, latency=1.0)
    assert comm == pytest.approx(41.0) and exposed == pytest.approx(11.0)
    # no overlap: everything after the backward pass
    comm, exposed = exposed_communication([1.0] * 4, 40.0, 0.0, lambda size: 10.0, latency=1.0)
    assert exposed == pytest.approx(41.0)
    # communication longer than the backward pass: the queue decides
    _, exposed = exposed_communication([1.0] * 4, 8.0, 1.0, lambda size: 10.0, latency=0.0)
    assert exposed == pytest.approx(2.0 + 40.0 - 8.0)
