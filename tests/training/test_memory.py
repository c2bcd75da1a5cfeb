"""A batch that cannot fit is refused before training, with one line that names the batch,
the limit and a batch size that fits. The limits are real: RLIMIT_AS set on a child
process, and a memory cgroup where the test may create one (as root)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from dlscale.training import memory
from dlscale.hardware import memory as limits
from dlscale.errors import UserError
from dlscale.models import build_model

GiB = 2**30


def _run_python(code: str, limit_as: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=limit,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


# --------------------------------------------------------------------------- what is available


def test_available_on_a_cpu_is_positive_and_says_where_it_comes_from():
    found = limits.available(torch.device("cpu"))
    assert found is not None and 0 < found.bytes
    assert found.bytes <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # never more than the machine has
    assert found.source


def test_an_address_space_limit_is_found_less_what_the_process_already_has():
    code = (
        "from dlscale.hardware import memory; import torch\n"
        "a = memory.available(torch.device('cpu'))\n"
        "size = memory.key_values(memory.Path('/proc/self/status'))['VmSize'] * 1024\n"
        "print(a.bytes, size, a.source)\n"
    )
    done = _run_python(code, limit_as=6 * GiB)
    assert done.returncode == 0, done.stderr
    free, size, source = done.stdout.split(maxsplit=2)
    assert source.startswith("RLIMIT_AS (6.0 GiB")
    assert abs(int(free) - (6 * GiB - int(size))) < 64 * 2**20  # the process grew a little after reading


def test_cgroup_files_are_read_with_the_page_cache_left_out(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "memory.max").write_text(f"{4 * GiB}\n")
    (folder / "memory.current").write_text(f"{3 * GiB}\n")
    (folder / "memory.stat").write_text(f"anon 1\ninactive_file {GiB // 2}\nactive_file {GiB // 2}\n")
    found = limits.cgroup_entry(folder, "memory.max", "memory.current", "memory.stat", ("inactive_file", "active_file"))
    assert found.bytes == 2 * GiB and "memory.max" in found.source and "4.0 GiB" in found.source
    (folder / "memory.max").write_text("max\n")
    assert limits.cgroup_entry(folder, "memory.max", "memory.current", "memory.stat", ("inactive_file",)) is None
    (folder / "memory.max").write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    assert limits.cgroup_entry(folder, "memory.max", "memory.current", "memory.stat", ("inactive_file",)) is None


def _cgroup(folder: Path, limit: str, usage: int, version: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = ("memory.max", "memory.current") if version == 2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (folder / names[0]).write_text(limit + "\n")
    (folder / names[1]).write_text(f"{usage}\n")
    (folder / "memory.stat").write_text("anon 0\n")


@pytest.mark.parametrize("version", [1, 2])
def test_the_cgroup_of_this_process_and_those_above_it_are_read(monkeypatch, tmp_path, version):
    root = tmp_path / "cgroup"
    _cgroup(root, "max" if version == 2 else "9223372036854771712", 0, version)  # the root: no limit
    _cgroup(root / "job", str(8 * GiB), 5 * GiB, version)  # SLURM's --mem on the job
    _cgroup(root / "job" / "step", str(16 * GiB), 1 * GiB, version)  # a looser limit below it
    membership = tmp_path / "proc-self-cgroup"
    membership.write_text("0::/job/step\n" if version == 2 else "5:cpu:/elsewhere\n4:memory:/job/step\n")
    monkeypatch.setattr(limits, "CGROUP_ROOTS", (tmp_path / "none", root))
    found = sorted(limits.cgroup_limits(membership), key=lambda a: a.bytes)
    assert [a.bytes for a in found] == [3 * GiB, 15 * GiB]
    assert str(root / "job") in found[0].source and "(8.0 GiB)" in found[0].source

    membership.write_text("0::/host/path/of/a/container\n" if version == 2 else "4:memory:/docker/abc\n")
    _cgroup(root, str(2 * GiB), GiB, version)  # a container sees its own cgroup as the root
    assert [a.bytes for a in limits.cgroup_limits(membership)] == [GiB]


# --------------------------------------------------------------------------- what a step needs


def test_a_step_is_measured_without_computing_or_allocating_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x, y = torch.empty(100_000, 1, 8, 8, device="meta"), torch.empty(100_000, dtype=torch.long, device="meta")
    started = time.perf_counter()
    need = memory.step_bytes(model, x, y)  # about 9 GB if it were real
    assert time.perf_counter() - started < 10
    assert need > 4 * GiB
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_step_grows_in_a_straight_line_with_the_batch():
    model = build_model("gpt-tiny", (32,), 64)
    sizes = {b: memory.step_bytes(model, torch.zeros(b, 32, dtype=torch.long), torch.zeros(b, 32, dtype=torch.long)) for b in (8, 16, 32)}
    assert sizes[8] < sizes[16] < sizes[32]
    assert sizes[32] - sizes[16] == pytest.approx(2 * (sizes[16] - sizes[8]), rel=0.05)


def test_a_model_that_cannot_run_on_meta_gets_no_figure():
    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.linear(x[: int(x.sum().item()) % 2 + 1])  # needs the values

    assert memory.step_bytes(DataDependent(), torch.ones(2, 4), torch.zeros(2, dtype=torch.long)) is None


def test_the_figure_is_a_lower_bound_of_what_a_real_step_takes():
    """The resident set's growth over one real step (VmHWM, reset through clear_refs) in a
    fresh process is at least the figure, and not far above it."""
    code = (
        "import torch\n"
        "from dlscale.training import memory\n"
        "from dlscale.hardware import memory as limits\n"
        "from dlscale.models.flops import loss_fn\n"
        "from dlscale.models import build_model\n"
        "model = build_model('cnn', (1, 8, 8), 10).train()\n"
        "x, y = torch.randn(4096, 1, 8, 8), torch.randint(0, 10, (4096,))\n"
        "loss_fn(model(x[:2]), y[:2]).backward(); model.zero_grad(set_to_none=True)\n"
        "figure = memory.step_bytes(model, x, y)\n"
        "def kib(key): return limits.key_values(limits.Path('/proc/self/status'))[key] * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "start = kib('VmRSS')\n"
        "loss_fn(model(x), y).backward()\n"
        "print(figure, kib('VmHWM') - start)\n"
    )
    done = _run_python(code)
    if done.returncode != 0 and "clear_refs" in done.stderr:
        pytest.skip("/proc/self/clear_refs cannot be written here")
    assert done.returncode == 0, done.stderr
    figure, real = map(int, done.stdout.split())
    assert figure <= real <= 2.5 * figure


# --------------------------------------------------------------------------- the check


def _check(monkeypatch, free_bytes, *, model=None, batch_size=4096, workers=1, local_workers=1, grad_accum=1,
           device="cpu", precision="fp32", compiled=False, sharded=False):
    """check_batch_fits of the small CNN, under a limit of ``free_bytes`` for each worker."""
    monkeypatch.setattr(memory, "available", lambda device, processes=1: memory.Available(free_bytes, "a test limit"))
    model = model if model is not None else build_model("cnn", (1, 8, 8), 10)
    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 10, (2,))
    memory.check_batch_fits(
        model, x, y, batch_size=batch_size, workers=workers, local_workers=local_workers, grad_accum=grad_accum,
        device=torch.device(device), precision=precision, compiled=compiled, sharded=sharded,
    )


def _need(batch: int) -> int:
    model = build_model("cnn", (1, 8, 8), 10)
    return memory.step_bytes(model, torch.empty(batch, 1, 8, 8, device="meta"), torch.empty(batch, dtype=torch.long, device="meta"))


def test_a_batch_that_fits_passes_and_one_that_does_not_is_refused_with_a_size_that_fits(monkeypatch):
    need = _need(4096)
    _check(monkeypatch, int(need * 1.2))  # fits: nothing said
    with pytest.raises(UserError) as refused:
        _check(monkeypatch, need // 4)
    message = str(refused.value)
    assert message.startswith("a batch of 4096 samples needs at least ")
    assert " is available (limit from a test limit); use --batch-size " in message and "\n" not in message
    suggestion = int(message.split("--batch-size ")[1].split()[0])
    assert suggestion < 4096 and suggestion & (suggestion - 1) == 0
    assert _need(suggestion) <= need // 4 / memory.SUGGESTION_HEADROOM * 1.05
    _check(monkeypatch, need // 4, batch_size=suggestion)  # the suggestion passes the same check


def test_workers_of_one_machine_share_its_memory_but_not_their_ulimits(monkeypatch):
    monkeypatch.setattr(limits, "mem_available", lambda: [limits.Available(8 * GiB, "MemAvailable")])
    monkeypatch.setattr(limits, "cgroup_limits", lambda: [limits.Available(12 * GiB, "cgroup")])
    monkeypatch.setattr(limits, "rlimits", lambda: [limits.Available(3 * GiB, "RLIMIT_AS", shared=False)])
    cpu = torch.device("cpu")
    assert limits.available(cpu) == limits.Available(3 * GiB, "RLIMIT_AS", shared=False)
    assert limits.available(cpu, processes=4) == limits.Available(2 * GiB, "MemAvailable, shared by 4 workers")


def test_each_worker_checks_its_share_of_the_batch_and_grad_accum_splits_it(monkeypatch):
    need = _need(1024)
    _check(monkeypatch, int(need * 1.2), batch_size=2048, workers=2)  # 1024 each
    with pytest.raises(UserError, match="needs at least .* per worker for one training step"):
        _check(monkeypatch, int(need * 0.5), batch_size=2048, workers=2)
    _check(monkeypatch, int(need * 1.2), batch_size=4096, grad_accum=4)  # micro-batches of 1024
    with pytest.raises(UserError, match="use --batch-size \\d+ or fewer"):
        _check(monkeypatch, int(need * 0.5), batch_size=4096, grad_accum=4)


def test_on_a_gpu_the_weights_count_too(monkeypatch):
    model = build_model("mlp", (1, 8, 8), 10)
    x, y = torch.empty(2, 1, 8, 8), torch.empty(2, dtype=torch.long)
    step_and_batch = memory.step_bytes(model, x, y) + x.nbytes + y.nbytes
    _check(monkeypatch, step_and_batch, model=model, batch_size=2)  # CPU: the weights are in memory already
    with pytest.raises(UserError, match="MiB of GPU memory for one training step"):
        _check(monkeypatch, step_and_batch, model=model, batch_size=2, device="cuda")


def test_half_precision_counts_half_and_compiled_models_are_not_checked(monkeypatch):
    need = _need(4096)
    with pytest.raises(UserError):
        _check(monkeypatch, int(need * 0.8))
    _check(monkeypatch, int(need * 0.8), precision="bf16")
    _check(monkeypatch, 1, compiled=True)
    _check(monkeypatch, 1, sharded=True)


def test_a_model_too_large_for_one_sample_says_so(monkeypatch):
    with pytest.raises(UserError, match="even one sample needs about .* use a smaller model or give the run more memory"):
        _check(monkeypatch, 1000)


def test_a_model_without_a_figure_is_not_refused(monkeypatch):
    monkeypatch.setattr(memory, "step_bytes", lambda *a: None)
    _check(monkeypatch, 1)


# --------------------------------------------------------------------------- for real, from the command line

TRAIN = ["train", "--model", "resnet18", "--data", "synthetic:3x64x64", "--max-steps", "1",
         "--precision", "fp32", "--no-channels-last", "--device", "cpu"]
BIG = [*TRAIN, "--synthetic-samples", "4096", "--batch-size", "4096", "--run-dir", "big"]
SMALL = [*TRAIN, "--synthetic-samples", "256", "--batch-size", "16", "--run-dir", "small"]  # few samples: a quick test set


def _cli_limited(args: list[str], cwd: Path, preexec) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "dlscale", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env=env, preexec_fn=preexec,
    )


def test_a_batch_over_an_address_space_limit_is_refused_and_a_small_one_trains(tmp_path):
    """About 7 GiB (at least) for 4096 samples of 3x64x64 through resnet18, under a 4 GiB
    ``ulimit -v``: refused in seconds, where it used to fail inside the first step."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * GiB, 4 * GiB))

    big = _cli_limited(BIG, tmp_path, limit)
    assert big.returncode == 2, big.stderr[-2000:]
    lines = big.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in big.stderr
    assert lines[0].startswith("error: a batch of 4096 samples needs at least ")
    assert "limit from RLIMIT_AS (4.0 GiB" in lines[0] and "use --batch-size " in lines[0]
    assert not (tmp_path / "big" / "summary.json").exists()

    small = _cli_limited(SMALL, tmp_path, limit)
    assert small.returncode == 0, small.stderr[-2000:]
    assert (tmp_path / "small" / "summary.json").is_file()


def _memory_cgroup(limit: int) -> Path | None:
    """A new memory cgroup with ``limit`` (v1 or v2), or None where this process may not make one."""
    name = f"dlscale-test-{uuid.uuid4().hex[:8]}"
    for parent, limit_file in ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"), (Path("/sys/fs/cgroup"), "memory.max")):
        if not (parent / "cgroup.procs").is_file():
            continue
        if limit_file == "memory.max" and "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            continue
        folder = parent / name
        try:
            folder.mkdir()
            (folder / limit_file).write_text(str(limit))
            return folder
        except OSError:
            if folder.exists():
                folder.rmdir()
    return None


def test_a_batch_over_a_cgroup_limit_is_refused_instead_of_being_killed(tmp_path):
    """SLURM's --mem and containers limit memory with a cgroup, whose OOM killer ends a run
    without a word; the run is refused first, and a small batch trains in the same cgroup."""
    folder = _memory_cgroup(3 * GiB)
    if folder is None:
        pytest.skip("no memory cgroup can be created here (needs root and a writable cgroup tree)")

    def join() -> None:
        (folder / "cgroup.procs").write_text(str(os.getpid()))

    try:
        big = _cli_limited(BIG, tmp_path, join)
        assert big.returncode == 2, (big.returncode, big.stderr[-2000:])
        (line,) = big.stderr.strip().splitlines()
        assert line.startswith("error: a batch of 4096 samples needs at least ")
        assert f"limit from cgroup {folder}" in line and "(3.0 GiB)" in line
        small = _cli_limited(SMALL, tmp_path, join)
        assert small.returncode == 0, (small.returncode, small.stderr[-2000:])
    finally:
        for _ in range(50):  # the cgroup empties once its processes are reaped
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.1)
