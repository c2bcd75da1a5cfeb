"""dlscale export: each format is loaded again by its own tool and gives the eager model's
outputs; a bad export is never left behind and the run directory is never changed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dlscale
from dlscale.cli import main
from dlscale.errors import UserError
from dlscale.inference.export import ONNX_MISSING, SPEC_KEY, TOLERANCE, export
from dlscale.models.small import MLP


class Net(nn.Module):
    """A user's own module: exported with module=Net, as dlscale.load takes it."""

    def __init__(self, features: int = 64, hidden: int = 16):
        super().__init__()
        self.features, self.hidden = features, hidden
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)


class NoisyMLP(MLP):
    """The run's MLP with noise added at every call: no export can match it."""

    def forward(self, x):
        return super().forward(x) + torch.rand(x.shape[0], 10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    made = {}
    for name, data in (("cnn", "digits"), ("mlp", "digits"), ("gpt-tiny", "synthetic:32")):
        made[name] = Path(dlscale.fit(name, data, max_steps=20, run_dir=str(root / name), verbose=False).run_dir)
    return made


def _eager(run_dir: Path, x: torch.Tensor, module=None) -> torch.Tensor:
    with torch.no_grad():
        return dlscale.load(run_dir, module=module, device="cpu", precision="fp32").module(x)


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))


def _tokens(n: int, length: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(n))


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["cnn", "gpt-tiny"])
def test_safetensors_rebuilds_from_its_own_spec_and_matches_exactly(runs, tmp_path, name):
    from safetensors import safe_open

    from dlscale.models.spec import build_from_spec
    from dlscale.runs.weights import load_weights

    path = tmp_path / "model.safetensors"
    result = export(runs[name], "safetensors", path)
    assert result["kind"] == "export" and result["max_abs_diff"] == 0.0 and result["bytes"] == path.stat().st_size
    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()[SPEC_KEY])
    assert spec == json.loads((runs[name] / "model.json").read_text())
    rebuilt = load_weights(path, build_from_spec(spec)).eval()  # gpt-tiny: its tied output layer restored
    x = _tokens(5, 32) if name == "gpt-tiny" else _images(5)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), _eager(runs[name], x))


@pytest.mark.parametrize("name", ["cnn", "gpt-tiny"])
def test_pt2_loads_with_torch_export_and_takes_other_batch_sizes(runs, tmp_path, name):
    path = tmp_path / "model.pt2"
    result = export(runs[name], "pt2", path)
    assert result["max_abs_diff"] <= TOLERANCE["pt2"]
    program = torch.export.load(str(path)).module()
    # exported with a batch of 4 (and 32 tokens); run on other sizes
    shapes = [(7, 32), (1, 9)] if name == "gpt-tiny" else [(7,), (1,)]
    for shape in shapes:
        x = _tokens(*shape) if name == "gpt-tiny" else _images(*shape)
        with torch.no_grad():
            assert float((program(x) - _eager(runs[name], x)).abs().max()) <= TOLERANCE["pt2"]
    assert result["dynamic"] == (["batch", "seq"] if name == "gpt-tiny" else ["batch"])


@pytest.mark.parametrize("name", ["mlp", "gpt-tiny"])
def test_onnx_runs_in_onnxruntime_like_the_eager_model(runs, tmp_path, name):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    result = export(runs[name], "onnx", path)
    assert result["checked_with"] == "onnxruntime" and result["max_abs_diff"] <= TOLERANCE["onnx"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props[SPEC_KEY])["num_outputs"] == (256 if name == "gpt-tiny" else 10)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _tokens(2, 11) if name == "gpt-tiny" else _images(6)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - _eager(runs[name], x).numpy()).max() <= TOLERANCE["onnx"]


def test_a_users_module_exports_given_its_class(tmp_path):
    run_dir = dlscale.fit(Net(), "digits", max_steps=20, run_dir=str(tmp_path / "net"), verbose=False).run_dir
    for fmt in ("safetensors", "pt2"):
        result = export(run_dir, fmt, tmp_path / f"net.{fmt}", module=Net)
        assert result["max_abs_diff"] <= TOLERANCE[fmt]
    x = _images(3)
    program = torch.export.load(str(tmp_path / "net.pt2")).module()
    with torch.no_grad():
        assert float((program(x) - _eager(Path(run_dir), x, module=Net)).abs().max()) <= TOLERANCE["pt2"]


def test_an_export_that_does_not_match_is_removed_and_says_by_how_much(runs, tmp_path):
    path = tmp_path / "noisy.pt2"
    with pytest.raises(UserError, match=r"differs from the eager model by .* over the tolerance"):
        export(runs["mlp"], "pt2", path, module=NoisyMLP((1, 8, 8), 10))
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_refuses_to_overwrite_without_force(runs, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("mine")
    with pytest.raises(UserError, match="already exists; give --force"):
        export(runs["mlp"], "safetensors", path)
    assert path.read_text() == "mine"
    export(runs["mlp"], "safetensors", path, force=True)
    assert path.stat().st_size > 1000


def test_refuses_a_missing_run_and_a_path_inside_the_run(runs, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        export(tmp_path / "nope", "safetensors", tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="inside the run"):
        export(runs["mlp"], "safetensors", runs["mlp"] / "model.safetensors", force=True)


def test_the_run_directory_is_unchanged_by_every_format(runs, tmp_path):
    before = _hashes(runs["mlp"])
    for fmt in ("safetensors", "pt2", "onnx"):
        export(runs["mlp"], fmt, tmp_path / f"m.{fmt}")
    assert _hashes(runs["mlp"]) == before


def test_cli_prints_one_line_or_the_json_result(runs, tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    assert main(["export", str(runs["mlp"]), "--format", "safetensors", "-o", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"safetensors {path}") and "max diff vs eager 0" in out[0]
    assert main(["export", str(runs["mlp"]), "--format", "pt2", "-o", str(tmp_path / "m.pt2"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["kind"] == "export" and result["format"] == "pt2" and result["checked_on"] == [[4, 1, 8, 8], [3, 1, 8, 8]]


def test_cli_unknown_format_is_one_error_line(runs, tmp_path, capsys):
    assert main(["export", str(runs["mlp"]), "--format", "tflite", "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'tflite'" in err[0]


def test_onnx_without_its_packages_says_how_to_get_them(runs, tmp_path):
    code = (
        "import sys; sys.modules['onnxscript'] = None\n"
        "from dlscale.cli import main\n"
        f"sys.exit(main(['export', {str(runs['mlp'])!r}, '--format', 'onnx', '-o', {str(tmp_path / 'm.onnx')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {ONNX_MISSING}"
    assert not (tmp_path / "m.onnx").exists()


class OneBatchSizeMLP(MLP):
    """The run's MLP written for batches of exactly 4: torch.export cannot make the batch dynamic."""

    def forward(self, x):
        return self.net(x.reshape(4, 64))


def test_a_model_that_fixes_its_batch_size_is_exported_for_that_shape_and_says_so(runs, tmp_path):
    result = export(runs["mlp"], "pt2", tmp_path / "fixed.pt2", module=OneBatchSizeMLP((1, 8, 8), 10))
    assert result["dynamic"] == [] and result["checked_on"] == [[4, 1, 8, 8]] and result["max_abs_diff"] == 0.0
