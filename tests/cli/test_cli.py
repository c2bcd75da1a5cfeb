import subprocess
import sys

import pytest
import torch

from dlscale import __version__
from dlscale.cli import build_parser, main


def test_version_from_module_and_script():
    done = subprocess.run([sys.executable, "-m", "dlscale", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"dlscale {__version__}"


def test_train_flags_are_the_contract():
    """Freezes the flag set: renaming one breaks users' scripts and the design contract."""
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    contract = {"--config", "--model", "--data", "--epochs", "--max-steps", "--batch-size", "--lr", "--device",
                "--precision", "--compile", "--no-compile", "--nproc", "--nnodes", "--strategy",
                "--checkpoint-every", "--resume", "--run-dir", "--seed", "--json", "--target-accuracy"}
    assert contract <= flags


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().err


def test_json_is_the_last_stdout_line_and_human_output_goes_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "mlp", "--max-steps", "3", "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 and out.strip().startswith("{")
    assert "dlscale run summary" in err


class _RefusingDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        from dlscale.errors import UserError

        raise UserError(f"image {index}.jpg is truncated; re-encode it")


def test_a_user_error_from_a_dataloader_worker_is_said_in_one_line():
    from dlscale.cli import one_line
    from dlscale.errors import UserError

    loader = torch.utils.data.DataLoader(_RefusingDataset(), batch_size=2, num_workers=1)
    with pytest.raises(UserError) as caught:
        next(iter(loader))
    assert "Traceback" in str(caught.value)  # how torch hands it back
    assert one_line(str(caught.value)) == "image 0.jpg is truncated; re-encode it"


def test_building_the_command_line_imports_no_torch():
    """`dlscale CMD --help` answers in a fraction of a second: no command's parser imports torch
    (benchmarks/startup.py measured 2.6 s when one did)."""
    import subprocess
    import sys

    code = "import sys; from dlscale.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
