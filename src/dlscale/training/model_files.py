"""The run's portable model, beside its checkpoints: ``model.json`` (what the model is and
how raw inputs become its inputs; written when the run is set up) and
``model.safetensors`` (the final weights; written when it ends). ``dlscale.load``,
``predict``, ``export`` and ``--init-from`` read these, never a pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dlscale.data import Splits
from dlscale.distributed import process_group as dist
from dlscale.errors import UserError
from dlscale.models.spec import SCHEMA_VERSION, SPEC_KIND, describe_module, read_spec
from dlscale.runs import checkpoint
from dlscale.runs.files import write_json
from dlscale.runs.weights import load_weights, save_weights
from dlscale.version import __version__

SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


def model_spec(zoo_name: str | None, model: nn.Module, splits: Splits, precision: str, channels_last: bool) -> dict[str, Any]:
    """model.json's object for a zoo model (by name) or a user's module (by import path)."""
    return {
        "kind": SPEC_KIND,
        "schema_version": SCHEMA_VERSION,
        "model": zoo_name,
        "module": None if zoo_name is not None else describe_module(model),
        "input_kind": splits.kind,
        "input_shape": [int(d) for d in splits.input_shape],
        "input_dtype": "int64" if splits.kind == "tokens" else "float32",
        "num_outputs": int(splits.num_classes),
        "targets": splits.targets,
        "class_names": list(splits.class_names) if splits.class_names else None,
        "preprocess": splits.preprocess,
        "data": splits.name,
        "precision": precision,
        "channels_last": bool(channels_last),
        "dlscale_version": __version__,
    }


def write_spec(run_dir: Path, spec: dict[str, Any]) -> None:
    write_json(Path(run_dir) / SPEC_FILE, spec)


def save_final_weights(run_dir: Path, model: nn.Module) -> None:
    """model.safetensors from the trained model (collective: a sharded model is gathered
    to rank 0 first, which writes it)."""
    from torch.distributed.fsdp import FSDPModule

    state = None
    if isinstance(model, FSDPModule):  # FSDP2: every worker holds a shard
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model.reshard()  # the last evaluation may leave the root's parameters gathered
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_main():
        save_weights(Path(run_dir) / WEIGHTS_FILE, model, state)
    dist.barrier()


def read_run_model(run_dir: Path, module: nn.Module | type | None = None) -> tuple[dict[str, Any], nn.Module]:
    """The run's model spec and its model with the trained weights (CPU, fp32, eval): from
    model.safetensors, or from the newest checkpoint of a run that has not finished."""
    from dlscale.models.spec import build_from_spec

    run_dir = Path(run_dir)
    spec_file = run_dir / SPEC_FILE
    if not spec_file.is_file():
        hint = "it was trained by an older dlscale; train it again" if (run_dir / "config.toml").is_file() else (
            "give a directory written by dlscale train, such as runs/<timestamp>-<model>-<data>"
        )
        raise UserError(f"{run_dir} has no {SPEC_FILE} (the model spec); {hint}")
    spec = read_spec(spec_file)
    model = build_from_spec(spec, module)
    weights = run_dir / WEIGHTS_FILE
    if weights.is_file():
        load_weights(weights, model)
    else:
        found = checkpoint.newest_checkpoint(run_dir)
        if found is None:
            raise UserError(f"{run_dir} has neither {WEIGHTS_FILE} nor a complete checkpoint; let the run finish or resume it")
        try:
            checkpoint.load_model(found, model)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise UserError(f"checkpoint {found} does not fit the run's model ({str(exc).splitlines()[0][:160]})") from None
    return spec, model.float().eval()


def init_weights(source: str, model: nn.Module, splits: Splits) -> str:
    """Fill a new run's ``model`` with trained weights (--init-from): a run directory (its
    model.safetensors, else its newest checkpoint) or one checkpoint folder. Returns what was used."""
    path = Path(source).expanduser()
    if checkpoint.STEP_DIR.match(path.name) and (path / "meta.json").is_file():
        try:
            checkpoint.load_model(path, model)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise UserError(f"--init-from {source}: the checkpoint does not fit this model ({str(exc).splitlines()[0][:160]})") from None
        return str(path)
    if not (path / SPEC_FILE).is_file():
        raise UserError(
            f"--init-from {source}: not a run directory with {SPEC_FILE} nor a checkpoint folder (checkpoints/step-N); "
            "give a run trained by dlscale train"
        )
    spec = read_spec(path / SPEC_FILE)
    if tuple(spec["input_shape"]) != tuple(splits.input_shape) or spec["num_outputs"] != splits.num_classes:
        raise UserError(
            f"--init-from {source}: that model takes inputs {tuple(spec['input_shape'])} with {spec['num_outputs']} outputs, "
            f"but this data has {tuple(splits.input_shape)} with {splits.num_classes}; fine-tune on data of the same shape"
        )
    weights = path / WEIGHTS_FILE
    if weights.is_file():
        load_weights(weights, model)
        return str(weights)
    found = checkpoint.newest_checkpoint(path)
    if found is None:
        raise UserError(f"--init-from {source}: the run has neither {WEIGHTS_FILE} nor a complete checkpoint")
    checkpoint.load_model(found, model)
    return str(found)

