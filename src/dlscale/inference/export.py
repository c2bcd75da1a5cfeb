"""``dlscale export``: a trained run as one file other tools load, checked against the model.

    safetensors  the weights, with the run's model spec (model.json: input shape, classes,
                 preprocessing) in the file's metadata under "dlscale_model_spec";
                 rebuild with ``models.spec.build_from_spec`` + ``runs.weights.load_weights``
    pt2          a ``torch.export`` program, loadable with ``torch.export.load(path).module()``
                 (the spec rides along as the extra file "dlscale_model_spec.json")
    onnx         an ONNX graph from ``torch.onnx.export(..., dynamo=True)`` (needs onnx and
                 onnxscript; the spec is in the model's metadata_props)

The batch dimension is dynamic in pt2 and onnx, and for language models the sequence
length too (up to the model's context); a model that cannot be traced so is exported for
the checked shape only, and the result's "dynamic" says which.

Every export is checked before it is kept: the written file is loaded again and run on a
real batch (a fixed-seed random batch of the model's input shape: standard-normal
features, which is what the run's standardisation produces, or random token ids), and
its outputs are compared with the eager model's, both fp32 on the CPU. A difference above
the format's tolerance removes the file. The run directory is only read.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlscale.errors import UserError
from dlscale.inference import FORMATS, TOLERANCE

SPEC_KEY = "dlscale_model_spec"
PT2_SPEC_FILE = "dlscale_model_spec.json"
EXAMPLE_BATCH = 4  # the batch exported with; the check also runs a batch of CHECK_BATCH
CHECK_BATCH = 3
ONNX_MISSING = "--format onnx needs the onnx and onnxscript packages: pip install onnx onnxscript (onnxruntime to check the export)"


def export(run_dir: str | Path, fmt: str, output: str | Path, module: nn.Module | type | None = None, force: bool = False) -> dict[str, Any]:
    """Write the run's model to ``output`` in ``fmt`` and check it; returns what was written
    and how closely it matched the eager model."""
    from dlscale.inference.model import load
    from dlscale.runs.files import FILE_MODE
    from dlscale.runs.results import stamp

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    run_dir, output = Path(run_dir), Path(output).expanduser()
    _check_output(run_dir, output, force)
    model = load(run_dir, module=module, device="cpu", precision="fp32")
    net, spec = model.module.eval(), model.spec
    batches = example_batches(spec)

    # the temporary name keeps the format's suffix: torch.export.save and load insist on .pt2
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=f".tmp.{fmt}", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = {"safetensors": _write_safetensors, "pt2": _write_pt2, "onnx": _write_onnx}[fmt]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations while (re)loading programs
            dynamic, run_export, checked_with = writer(net, spec, batches[0], tmp, module)
        checked = batches[:1] if dynamic == [] else batches  # a fixed shape: the traced batch only
        diff = None
        if run_export is not None:
            with torch.no_grad():
                diff = max(float((run_export(x).float() - net(x).float()).abs().max()) for x in checked)
            if not diff <= TOLERANCE[fmt]:  # NaN fails too
                raise UserError(
                    f"the {fmt} export differs from the eager model by {diff:.3g} (max abs), over the tolerance "
                    f"{TOLERANCE[fmt]:g}; nothing was written"
                )
        os.chmod(tmp, FILE_MODE)  # mkstemp made it 0600
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return stamp("export", {
        "run_dir": str(run_dir),
        "format": fmt,
        "path": str(output),
        "bytes": output.stat().st_size,
        "max_abs_diff": diff,
        "tolerance": TOLERANCE[fmt],
        "checked_with": checked_with,
        "checked_on": [list(x.shape) for x in checked] if diff is not None else [],
        "dynamic": dynamic,
    })


def example_batches(spec: dict[str, Any]) -> list[torch.Tensor]:
    """Two fixed-seed batches of the model's inputs, of different sizes (and, for language
    models, lengths), so that a check also proves the dynamic dimensions."""
    generator = torch.Generator().manual_seed(0)
    shape = tuple(spec["input_shape"])
    if spec["input_kind"] == "tokens":
        vocab, length = spec["num_outputs"], shape[0]
        return [
            torch.randint(0, vocab, (EXAMPLE_BATCH, length), generator=generator),
            torch.randint(0, vocab, (CHECK_BATCH, max(1, length // 2)), generator=generator),
        ]
    return [torch.randn(n, *shape, generator=generator) for n in (EXAMPLE_BATCH, CHECK_BATCH)]


def _check_output(run_dir: Path, output: Path, force: bool) -> None:
    if not run_dir.is_dir():
        raise UserError(f"run {run_dir} does not exist; give a directory written by dlscale train")
    if not output.parent.is_dir():
        raise UserError(f"folder {output.parent} does not exist; create it or give another -o path")
    if output.is_dir():
        raise UserError(f"{output} is a folder; give a file name, such as {output / 'model'}.<format>")
    if output.resolve().is_relative_to(run_dir.resolve()):
        raise UserError(f"{output} is inside the run {run_dir}, which export never changes; write it elsewhere")
    if output.exists() and not force:
        raise UserError(f"{output} already exists; give --force to replace it, or another -o path")


# --------------------------------------------------------------------------- safetensors


def _write_safetensors(net: nn.Module, spec: dict[str, Any], example: torch.Tensor, path: Path, module: Any):
    """The weights with the spec in the metadata; checked by rebuilding the model from the
    file alone (its spec) and loading the weights into it."""
    from safetensors import safe_open

    from dlscale.models.spec import MAX_SPEC_BYTES, build_from_spec
    from dlscale.runs.weights import load_weights, save_weights

    save_weights(path, net, metadata={SPEC_KEY: json.dumps(spec)})
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(SPEC_KEY, "")
    if not 0 < len(text) <= MAX_SPEC_BYTES:
        raise UserError(f"the safetensors export lost its model spec (metadata {SPEC_KEY!r}); nothing was written")
    rebuilt = build_from_spec(json.loads(text), copy.deepcopy(module) if isinstance(module, nn.Module) else module)
    with torch.no_grad():
        for value in rebuilt.state_dict().values():
            value.zero_()  # every value compared must come from the file (an instance given would hold them already)
    load_weights(path, rebuilt)
    return None, rebuilt.float().eval(), "safetensors reloaded into a model rebuilt from its spec"


# --------------------------------------------------------------------------- pt2


def _trace(net: nn.Module, spec: dict[str, Any], example: torch.Tensor) -> tuple[Any, list[str]]:
    """``torch.export`` with a dynamic batch (and sequence length, up to the model's context,
    for language models); a model that cannot be traced so is exported for the example's shape."""
    from torch.export import Dim

    dims = {0: Dim("batch", min=1)}
    names = ["batch"]
    if spec["input_kind"] == "tokens":
        context = int(getattr(net, "block_size", example.shape[1]))
        dims[1] = Dim("seq", min=1, max=context)
        names.append("seq")
    try:
        return torch.export.export(net, (example,), dynamic_shapes=({**dims},)), names
    except Exception:  # noqa: BLE001 - any tracing failure: try the fixed shape below
        pass
    try:
        return torch.export.export(net, (example,)), []
    except Exception as exc:  # noqa: BLE001 - the user's model code: say what failed, in one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"torch.export cannot trace this model ({type(exc).__name__}: {first}); try --format safetensors") from None


def _write_pt2(net: nn.Module, spec: dict[str, Any], example: torch.Tensor, path: Path, module: Any):
    program, dynamic = _trace(net, spec, example)
    torch.export.save(program, path, extra_files={PT2_SPEC_FILE: json.dumps(spec)})
    return dynamic, torch.export.load(path).module(), "torch.export.load"


# --------------------------------------------------------------------------- onnx


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(ONNX_MISSING) from None


def _write_onnx(net: nn.Module, spec: dict[str, Any], example: torch.Tensor, path: Path, module: Any):
    """Exported through torch.export (dynamo=True); checked with onnxruntime, or only by
    onnx.checker when onnxruntime is not installed (max_abs_diff is then null)."""
    import onnx

    program, dynamic = _trace(net, spec, example)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed" lines
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for --json
            onnx_program = torch.onnx.export(program, (example,), dynamo=True, verbose=False)
    except Exception as exc:  # noqa: BLE001 - an operator ONNX lacks, for instance
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"torch.onnx cannot convert this model ({type(exc).__name__}: {first}); try --format pt2") from None
    finally:
        quiet.setLevel(level)
    onnx_program.model.metadata_props[SPEC_KEY] = json.dumps(spec)
    onnx_program.save(path, external_data=False)
    onnx.checker.check_model(str(path))
    try:
        import onnxruntime
    except ImportError:
        return dynamic, None, "onnx.checker only (install onnxruntime to compare outputs)"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run_onnx(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return dynamic, run_onnx, "onnxruntime"
