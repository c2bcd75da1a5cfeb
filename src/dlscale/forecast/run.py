"""One forecast from what the user gave: the model's size, the single-GPU speed, the links
and the model's constants, each resolved (or calibrated from this machine's benchmark
results), then ``predict`` at every GPU count. `dlscale forecast` is this function behind flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dlscale.errors import UserError
from dlscale.forecast import calibrate, inputs
from dlscale.forecast.model import BUCKET_BYTES, GRAD_BYTES, JITTER_CV, OVERHEAD_S, OVERLAP, predict
from dlscale.forecast.networks import GB, Network, custom_network, network


@dataclass(frozen=True)
class ForecastRequest:
    """The forecast's inputs in the units of `dlscale forecast`'s flags; None means "not given"."""

    gpus: list[int]
    batch_size: int  # per GPU
    precision: str  # fp32 | bf16 | fp16: the compute precision (the datasheet peak with ``device``)
    gpus_per_node: int
    nics_per_node: int
    network: str  # inter-node preset
    intra_network: str  # intra-node preset
    mfu: float  # with ``device``
    model: str | None = None  # a zoo model, sized on the meta device
    params: int | None = None  # overrides the model's
    flops_per_sample: float | None = None  # overrides the model's
    single_throughput: float | None = None  # samples/s of one GPU
    device: str | None = None  # a GPU name for its datasheet peak
    bandwidth: float | None = None  # GB/s per NIC, in place of ``network``'s
    latency: float | None = None  # us per ring step
    overlap: float | None = None
    overhead_ms: float | None = None
    jitter: float | None = None
    calibrate_comm: str | None = None  # a `bench comm` result
    calibrate_scaling: str | None = None  # a `bench scaling` result
    grad_precision: str = "fp32"  # the parameters' (so the gradients') precision: fp32 also under AMP
    grad_accum: int = 1  # micro-steps per all-reduce
    input_rate: float | None = None  # samples/s one node's data loaders deliver


@dataclass(frozen=True)
class Forecast:
    rows: list[dict[str, Any]]  # one per GPU count (see ``predict``)
    inputs: dict[str, Any]  # every input as used, with where the speed and the links come from


def run_forecast(request: ForecastRequest, say: Callable[[str], None]) -> Forecast:
    """Resolve every input of ``request`` and predict; ``say`` receives progress and notes
    (one line of rich console markup each). UserError names the flag at fault."""
    if request.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1; got {request.batch_size}")
    if request.gpus_per_node < 1 or request.nics_per_node < 1:
        raise UserError("--gpus-per-node and --nics-per-node must be at least 1")
    params, train_flops = _params_and_flops(request)
    scaling = calibrate.scaling_rows(request.calibrate_scaling) if request.calibrate_scaling else None
    single, speed_source = _single_gpu_speed(request, train_flops, scaling, say)
    intra, inter = _links(request, say)
    knobs = _knobs(request)
    grad_bytes = GRAD_BYTES[request.grad_precision]
    knobs.update(grad_accum=request.grad_accum, input_rate=request.input_rate)

    if scaling and request.overhead_ms is None:
        largest = max(scaling, key=lambda r: r["workers"])
        if largest["workers"] > 1:
            def efficiency_at(overhead: float) -> float:
                return predict(
                    params, train_flops, largest["per_worker_batch"], single, [1, largest["workers"]],
                    largest["workers"], intra, inter, grad_bytes_per_param=grad_bytes,
                    **{**knobs, "overhead_s": overhead},
                )[-1]["efficiency"]

            knobs["overhead_s"] = calibrate.fit_overhead(largest, efficiency_at)
            say(f"calibrated: per-step overhead {knobs['overhead_s'] * 1e3:.3g} ms makes the model match the "
                f"measured {100 * largest['efficiency']:.1f}% efficiency at {largest['workers']} workers")
    rows = predict(
        params, train_flops, request.batch_size, single, request.gpus, request.gpus_per_node, intra, inter,
        grad_bytes_per_param=grad_bytes, nics_per_node=request.nics_per_node, **knobs,
    )
    used = {
        "model": request.model, "params": params, "flops_per_sample": train_flops,
        "batch_size": request.batch_size, "precision": request.precision,
        "grad_precision": request.grad_precision, "grad_accum": request.grad_accum, "input_rate": request.input_rate,
        "single_throughput": single, "single_throughput_source": speed_source,
        "gpus_per_node": request.gpus_per_node, "nics_per_node": request.nics_per_node,
        "intra_network": vars(intra), "inter_network": vars(inter),
        "overlap": knobs.get("overlap", OVERLAP),
        "overhead_s": knobs.get("overhead_s", OVERHEAD_S),
        "jitter_cv": knobs.get("jitter_cv", JITTER_CV),
        "bucket_bytes": BUCKET_BYTES,
        "calibrated_from": {"comm": request.calibrate_comm, "scaling": request.calibrate_scaling},
    }
    return Forecast(rows, used)


def _params_and_flops(request: ForecastRequest) -> tuple[int, float | None]:
    """The gradient size (parameters) and the training FLOPs per sample: the zoo model's,
    or the numbers given in their place."""
    params, train_flops = None, None
    if request.model:
        from dlscale.models.size import model_size

        size = model_size(request.model)
        params, train_flops = size.params, size.train_flops_per_sample
    if request.params is not None:
        if request.params < 1:
            raise UserError(f"--params must be at least 1; got {request.params}")
        params = request.params
    if request.flops_per_sample is not None:
        if not request.flops_per_sample > 0:
            raise UserError(f"--flops-per-sample must be above 0; got {request.flops_per_sample}")
        train_flops = request.flops_per_sample
    if params is None:
        raise UserError("give --model NAME (or --params N) so the gradient size is known")
    return params, train_flops


def _single_gpu_speed(request: ForecastRequest, train_flops: float | None, scaling: list[dict[str, Any]] | None,
                      say: Callable[[str], None]) -> tuple[float, str]:
    """(samples/s of one GPU, where it comes from), in this order: given, a `bench scaling`
    result, a datasheet peak x MFU, measured now."""
    if request.single_throughput is not None:
        if not request.single_throughput > 0:
            raise UserError(f"--single-throughput must be above 0 samples/s; got {request.single_throughput}")
        return request.single_throughput, f"measured: {request.single_throughput:g} samples/s (given)"
    if scaling:
        return calibrate.speed_from_scaling(scaling, request.calibrate_scaling)
    if request.device:
        return inputs.datasheet_speed(request.device, request.precision, request.mfu, train_flops)
    if request.model:
        return inputs.measure_here(request.model, request.batch_size, say)
    raise UserError("give the single-GPU speed: --single-throughput SAMPLES_PER_S (measured, e.g. by "
                    "'dlscale bench train'), or --device NAME --mfu 0.4 for its datasheet peak x an assumed MFU")


def _links(request: ForecastRequest, say: Callable[[str], None]) -> tuple[Network, Network]:
    """(intra-node link, inter-node link): presets, the figures given, or `bench comm`'s."""
    inter = network(request.network)
    if inter.scope != "inter":
        say(f"[yellow]note: {request.network} is an intra-node link used here between nodes[/yellow]")
    if request.bandwidth is not None:
        latency = request.latency if request.latency is not None else inter.latency * 1e6
        inter = custom_network(request.bandwidth, latency)
    elif request.latency is not None:
        inter = custom_network(inter.bandwidth / GB, request.latency, name=f"{inter.name}+latency")
    intra = calibrate.network_from_comm(request.calibrate_comm) if request.calibrate_comm else network(request.intra_network)
    return intra, inter


def _knobs(request: ForecastRequest) -> dict[str, Any]:
    """The model's constants the user set (``predict``'s keyword arguments)."""
    knobs: dict[str, Any] = {}
    if request.overlap is not None:
        knobs["overlap"] = request.overlap
    if request.overhead_ms is not None:
        if request.overhead_ms < 0:
            raise UserError(f"--overhead-ms must be at least 0; got {request.overhead_ms}")
        knobs["overhead_s"] = request.overhead_ms / 1e3
    if request.jitter is not None:
        if request.jitter < 0:
            raise UserError(f"--jitter must be at least 0; got {request.jitter}")
        knobs["jitter_cv"] = request.jitter
    return knobs
