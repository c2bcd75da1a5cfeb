"""The forecast as a library call: ``run_forecast`` gives what `dlscale forecast --json` prints,
and one meta-device count sizes a model for the forecast and the lab alike."""

import json

import pytest

from dlscale.cli import main
from dlscale.forecast.model import ASSUMPTIONS
from dlscale.forecast.run import ForecastRequest, run_forecast
from dlscale.models.size import model_size, parameter_count


def request(**given):
    fields = dict(gpus=[1, 8, 64], batch_size=32, precision="fp32", gpus_per_node=8, nics_per_node=1,
                  network="ib-edr", intra_network="nvlink3", mfu=0.4)
    return ForecastRequest(**{**fields, **given})


def test_run_forecast_is_what_the_command_prints(capsys):
    said = []
    forecast = run_forecast(request(model="resnet50", single_throughput=1200.0), say=said.append)
    assert main(["forecast", "--model", "resnet50", "--gpus", "1,8,64", "--network", "ib-edr",
                 "--single-throughput", "1200", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["results"] == forecast.rows and printed["inputs"] == forecast.inputs
    assert said == []  # nothing measured, nothing calibrated, no odd link: nothing to say


def test_notes_go_to_say():
    said = []
    run_forecast(request(params=1_000_000, single_throughput=100.0, network="nvlink3"), say=said.append)
    assert len(said) == 1 and "intra-node link used here between nodes" in said[0]


def test_one_meta_device_count_for_forecast_and_lab():
    size = model_size("resnet50")
    assert size.params == parameter_count("resnet50") == 25_557_032  # torchvision's count
    assert 20e9 < size.train_flops_per_sample < 30e9


def test_the_assumptions_say_where_the_constants_come_from_and_what_calibrating_replaces():
    text = " ".join(ASSUMPTIONS)
    assert "not yet calibrated" not in text and "by hand" not in text
    assert "--calibrate-comm" in text and "--calibrate-scaling" in text


@pytest.mark.parametrize("given, message", [
    (dict(params=10, single_throughput=10.0, batch_size=0), "--batch-size"),
    (dict(single_throughput=10.0), "--model"),
])
def test_mistakes_are_user_errors(given, message):
    from dlscale.errors import UserError

    with pytest.raises(UserError, match=message):
        run_forecast(request(**given), say=print)
