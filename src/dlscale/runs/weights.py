"""A model's weights as one safetensors file (RUN/model.safetensors): portable, loadable
without pickle by any safetensors reader, and written atomically.

Tied weights (GPT's output layer shares the token embedding) are stored once: safetensors
refuses two names for one storage, and loading restores the tie through the module."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dlscale.errors import UserError
from dlscale.runs.files import atomic_write_bytes


def tied_names(module: nn.Module) -> set[str]:
    """Every parameter name after the first that refers to the same parameter."""
    seen: set[int] = set()
    tied = set()
    for name, parameter in module.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            tied.add(name)
        seen.add(id(parameter))
    return tied


def save_weights(
    path: Path, module: nn.Module, state: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None
) -> None:
    """Write ``state`` (default: the module's state dict; give the gathered full state of a
    sharded model) with ``module``'s tied names dropped, as contiguous CPU tensors, and
    ``metadata`` (text) in the file's header beside format and written_by."""
    from safetensors.torch import save

    state = module.state_dict() if state is None else state
    skip = tied_names(module)
    tensors = {name: value.detach().cpu().contiguous() for name, value in state.items() if name not in skip}
    atomic_write_bytes(Path(path), save(tensors, metadata={**(metadata or {}), "format": "pt", "written_by": "dlscale"}))


def load_weights(path: Path, module: nn.Module) -> nn.Module:
    """Fill ``module`` from a safetensors file: every weight must be there with its shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot read weights {path} ({type(exc).__name__}: {exc}); the file is damaged or not safetensors") from None
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that does not fit
        reason = str(exc).replace("\n", " ").replace("\t", "")[:300]
        raise UserError(f"weights {path} do not fit the model ({reason}); was it built for other data?") from None
    missing = set(missing) - tied_names(module)
    if missing or unexpected:
        detail = "; ".join(
            f"{what}: {', '.join(sorted(names)[:5])}" for what, names in (("missing", missing), ("unexpected", unexpected)) if names
        )
        raise UserError(f"weights {path} do not fit the model ({detail}); was it built for another model?")
    return module
