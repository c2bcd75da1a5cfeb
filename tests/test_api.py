import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import dlscale
from dlscale.runs.results import SUMMARY_KEYS


def test_fit_with_names_returns_the_summary_json_dict(tmp_path):
    result = dlscale.fit("cnn", "digits", epochs=2, run_dir=str(tmp_path / "r"), verbose=False)
    assert set(SUMMARY_KEYS) <= set(result.summary)
    assert json.loads((tmp_path / "r/summary.json").read_text()) == result.summary
    assert result.summary["test_accuracy"] > 0.5
    assert [r["epoch"] for r in result.history if r["kind"] == "val"] == [0, 1]


def test_fit_any_module_on_numpy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    result = dlscale.fit(model, (x[:400], y[:400]), val_data=(x[400:], y[400:]), test_data=(x[400:], y[400:]),
                         epochs=20, batch_size=32, lr=0.01, run_dir=str(tmp_path / "r"), verbose=False)
    assert result.summary["model"] == "Sequential" and result.summary["data"] == "custom"
    assert result.summary["test_accuracy"] > 0.9
    assert result.model is model


def test_fit_a_zoo_model_on_a_dataset(tmp_path):
    x = torch.randn(256, 1, 8, 8)
    y = torch.randint(0, 3, (256,))
    result = dlscale.fit("mlp", TensorDataset(x, y), max_steps=5, batch_size=32, devices="cpu", run_dir=str(tmp_path / "r"), verbose=False)
    assert result.summary["steps"] == 5 and result.summary["test_accuracy"] is None
    assert result.model.net[-1].out_features == 3


def test_fit_rejects_unknown_options():
    with pytest.raises(dlscale.UserError, match="unknown option"):
        dlscale.fit("cnn", "digits", epochz=3)


def test_fit_rejects_mismatched_lengths():
    with pytest.raises(dlscale.UserError, match="x has 4 samples but y has 3"):
        dlscale.fit(torch.nn.Linear(2, 2), (np.zeros((4, 2)), np.zeros(3)))


def test_fit_refuses_non_finite_inputs_and_out_of_range_labels_naming_the_sample():
    import numpy as np

    x = np.zeros((40, 4), dtype=np.float32)
    x[17, 2] = np.nan
    with pytest.raises(dlscale.UserError, match="non-finite values .* at sample 17"):
        dlscale.fit(torch.nn.Linear(4, 2), (x, np.zeros(40, dtype=np.int64)), epochs=1, batch_size=8)
    labels = np.zeros(40, dtype=np.int64)
    labels[3] = 2**31
    with pytest.raises(dlscale.UserError, match="label 2147483648 at index 3"):
        dlscale.fit(torch.nn.Linear(4, 2), (np.zeros((40, 4), dtype=np.float32), labels), epochs=1, batch_size=8)


def test_paths_may_be_given_as_path_objects(tmp_path):
    result = dlscale.fit("mlp", "digits", max_steps=2, run_dir=tmp_path / "run", verbose=False)
    assert result.run_dir == tmp_path / "run" and (tmp_path / "run" / "summary.json").is_file()
    again = dlscale.fit("mlp", "digits", max_steps=2, run_dir=tmp_path / "tuned", init_from=tmp_path / "run", verbose=False)
    assert again.summary["steps"] == 2
