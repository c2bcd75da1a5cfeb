"""One builder, provenance.measured_on(), behind every record of where a figure came from;
the keys each record has always had stay as they were (they are part of the files)."""

from dlscale.hardware import peaks, provenance


def test_measured_on_says_which_software_and_machine():
    machine = provenance.measured_on()
    assert list(machine) == ["dlscale", "torch", "cuda", "hip", "hostname", "cpu", "threads", "gpus"]
    assert machine["cpu"] and machine["threads"] >= 1 and isinstance(machine["gpus"], list)


def test_benchmark_provenance_keeps_its_keys_and_takes_its_values_from_measured_on():
    record, machine = provenance.provenance(), provenance.measured_on()
    assert list(record) == [
        "dlscale", "torch", "cuda", "driver", "python", "cpu", "cpu_threads", "gpus", "command", "date", "git_commit",
    ]
    assert record["cpu_threads"] == machine["threads"] and record["cpu"] == machine["cpu"]
    assert record["command"].startswith("dlscale")


def test_the_peak_cache_fingerprint_is_a_part_of_measured_on():
    print_, machine = peaks.fingerprint(), provenance.measured_on()
    assert list(print_) == ["hostname", "cpu", "threads", "gpus", "torch", "method"]
    assert all(print_[key] == machine[key] for key in ("hostname", "cpu", "threads", "gpus", "torch"))
