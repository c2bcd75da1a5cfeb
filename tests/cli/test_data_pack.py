"""`dlscale data pack` as a user runs it, and training and predicting on what it writes."""

import json
import math

import dlscale
import numpy as np
import pytest
from PIL import Image
from tests.conftest import last_json
from dlscale.inference.inputs import TOKEN_IDS_ONLY


def test_pack_then_train_then_predict(cli, tmp_path):
    (tmp_path / "book.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    done = cli(["data", "pack", "book.txt", "out.bin", "--json"])
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["tokens"] == result["bytes"] == 9000 and result["dtype"] == "uint8" and result["path"] == "out.bin"
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "book.txt").read_bytes()

    done = cli(["train", "--model", "gpt-tiny", "--data", "out.bin", "--max-steps", "3", "--batch-size", "8",
                "--run-dir", "run", "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])

    done = cli(["predict", "run", "--prompt", "ab", "--max-new-tokens", "5", "--json"])
    assert done.returncode == 0, done.stderr
    assert last_json(done.stdout)["prompt"] == "ab"


def test_a_missing_source_is_one_error_line(cli, tmp_path):
    done = cli(["data", "pack", "missing.txt", "out.bin"])
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "missing.txt does not exist" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.bin").exists()


def test_a_folder_without_images_is_one_error_line(cli, tmp_path):
    (tmp_path / "photos").mkdir()
    done = cli(["data", "pack", "photos", "out"])
    assert done.returncode == 2 and done.stderr.startswith("error: photos holds no class subfolders of images")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_an_image_folder_packs_into_shards_that_train(cli, tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
            pixels[..., c] += 150
            image = Image.fromarray(pixels)
            (image.convert("L") if i == 3 else image).save(tmp_path / "photos" / name / f"{i}.jpg")
    done = cli(["data", "pack", "photos", "shards", "--shard-size", "16K", "--json"])
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["samples"] == 24 and result["shards"] > 3 and result["path"] == "shards"
    assert "tar shards" in done.stderr

    done = cli(["train", "--model", "cnn", "--data", "shards", "--augment", "standard", "--image-size", "32",
                "--batch-size", "4", "--max-steps", "2", "--precision", "fp32", "--no-channels-last",
                "--run-dir", "run", "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])

    (tmp_path / "book.txt").write_text("some text")
    done = cli(["data", "pack", "book.txt", "out.bin", "--shard-size", "1M"])
    assert done.returncode == 2 and done.stderr.startswith("error: --shard-size is for image folders")
    done = cli(["data", "pack", "photos", "other", "--shard-size", "lots"])
    assert done.returncode == 2 and done.stderr.startswith("error: --shard-size 'lots' is not a size")


@pytest.fixture(scope="module")
def ids_run(tmp_path_factory):
    """gpt-tiny trained briefly on a nanoGPT folder of another tokenizer's ids (vocabulary 300)."""
    tmp_path = tmp_path_factory.mktemp("ids-run")
    data = tmp_path / "ids"
    data.mkdir()
    np.tile(np.arange(300, dtype=np.uint16), 10).tofile(data / "train.bin")
    np.arange(300, dtype=np.uint16).tofile(data / "val.bin")
    (data / "meta.json").write_text(json.dumps({"vocab_size": 300, "dtype": "uint16"}))
    dlscale.fit("gpt-tiny", str(data), max_steps=2, batch_size=8, run_dir=str(tmp_path / "run"), verbose=False)
    return tmp_path / "run"


def test_a_token_ids_run_refuses_a_text_prompt_and_continues_ids(ids_run, cli):
    done = cli(["predict", str(ids_run), "--prompt", "ab"])
    assert done.returncode == 2 and done.stderr.strip() == f"error: {TOKEN_IDS_ONLY}"
    model = dlscale.load(ids_run, device="cpu")
    with pytest.raises(dlscale.UserError, match=TOKEN_IDS_ONLY):
        model.generate("ab")
    new = model.generate([1, 2, 3], max_new_tokens=4, temperature=0)
    assert len(new) == 4 and all(isinstance(t, int) and 0 <= t < 300 for t in new)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_serve_generate_refuses_text_and_continues_ids_for_a_token_ids_run(ids_run):
    from dlscale.serve.app import create_app
    from starlette.testclient import TestClient

    with TestClient(create_app(dlscale.load(ids_run, device="cpu"))) as client:
        r = client.post("/generate", json={"prompt": "ab"})
        assert r.status_code == 400 and r.json() == {"error": TOKEN_IDS_ONLY}
        r = client.post("/generate", json={"prompt": [1, 2, 3], "max_new_tokens": 3, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["prompt"] == [1, 2, 3] and len(r.json()["completion"]) == 3
        r = client.post("/predict", json={"inputs": "ab"})
        assert r.status_code == 400 and r.json() == {"error": TOKEN_IDS_ONLY}
