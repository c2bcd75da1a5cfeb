"""The JSON model spec (RUN/model.json): what rebuilds a trained model without pickle.

A zoo model is rebuilt by name for the recorded input shape and class count. A user's
own ``nn.Module`` is recorded by its import path ``package.module:Class`` and the
constructor arguments it keeps as attributes of the same name (``self.hidden =
hidden``), so ``dlscale.load`` can import and build it again, or take the class or an
instance from the caller (``dlscale.load(run, module=MyNet)``).

Importing a module named in a file would run that module's code, so only a class that
is an ``nn.Module`` subclass is ever called, with JSON values only; standard-library
modules and scripts (``__main__``) are refused, and ``module=`` avoids the import.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

from torch import nn

from dlscale.errors import UserError
from dlscale.models import build_model, model_info

SPEC_KIND = "model"
SCHEMA_VERSION = 1
MAX_SPEC_BYTES = 1 << 20  # a spec is a few kB; class names of a large folder stay far below this
_IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_JSON_SCALARS = (bool, int, float, str, type(None))


def describe_module(module: nn.Module) -> dict[str, Any]:
    """``{"import_path": "pkg.mod:Class", "kwargs": {...} or None}`` for a user's module;
    kwargs is None when a required constructor argument is not kept as an attribute."""
    cls = type(module)
    kwargs: dict[str, Any] | None = {}
    try:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        parameters = []
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = getattr(module, parameter.name, inspect.Parameter.empty)
        if _plain(value):
            kwargs[parameter.name] = list(value) if isinstance(value, tuple) else value
        elif parameter.default is inspect.Parameter.empty:
            kwargs = None  # cannot be rebuilt from the file alone: load(run, module=...) can
            break
    return {"import_path": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, _JSON_SCALARS) for v in value)
    return isinstance(value, _JSON_SCALARS)


def read_spec(path: Path) -> dict[str, Any]:
    """model.json, checked: a bounded JSON object of the kind and version this dlscale writes."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}); give a run directory written by dlscale train") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise UserError(f"{path} is larger than {MAX_SPEC_BYTES} bytes, not a model spec dlscale wrote")
    try:
        spec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the run's model spec is damaged") from None
    if not isinstance(spec, dict) or spec.get("kind") != SPEC_KIND:
        raise UserError(f"{path} is not a dlscale model spec (no \"kind\": \"model\")")
    if spec.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path} has schema_version {spec.get('schema_version')!r}; this dlscale reads {SCHEMA_VERSION}")
    _check_fields(spec, path)
    return spec


def _check_fields(spec: dict[str, Any], path: Path) -> None:
    def bad(what: str) -> UserError:
        return UserError(f"{path}: {what}; the run's model spec is damaged")

    shape = spec.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and 0 < d < 1 << 20 for d in shape):
        raise bad("input_shape is not a list of positive whole numbers")
    if type(spec.get("num_outputs")) is not int or not 0 < spec["num_outputs"] < 1 << 24:
        raise bad("num_outputs is not a positive whole number")
    if spec.get("input_kind") not in ("image", "tokens"):
        raise bad("input_kind is neither image nor tokens")
    if spec.get("targets") not in ("classes", "values"):
        raise bad("targets is neither classes nor values")
    if (spec.get("model") is None) == (spec.get("module") is None):
        raise bad("it names neither a zoo model nor a module (or both)")
    if spec.get("model") is not None and not isinstance(spec["model"], str):
        raise bad("model is not a name")
    module = spec.get("module")
    if module is not None:
        if not isinstance(module, dict) or not isinstance(module.get("import_path"), str):
            raise bad("module has no import_path")
        kwargs = module.get("kwargs")
        if kwargs is not None and (not isinstance(kwargs, dict) or not all(_plain(v) for v in kwargs.values())):
            raise bad("module kwargs are not plain JSON values")
    names = spec.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise bad("class_names is not a list of names")
    recipe = spec.get("preprocess")
    if recipe is not None:
        _check_recipe(recipe, bad)


def _check_recipe(recipe: Any, bad) -> None:
    if not isinstance(recipe, dict):
        raise bad("preprocess is not an object")
    kind = recipe.get("kind")
    numbers = (int, float)
    if kind == "standardise":
        ok = (
            isinstance(recipe.get("uint8_pixels"), bool)
            and isinstance(recipe.get("raw_scale"), numbers)
            and all(isinstance(recipe.get(k), list) and all(isinstance(v, numbers) for v in recipe[k]) for k in ("mean", "std"))
            and len(recipe["mean"]) == len(recipe["std"])
            and all(v != 0 for v in recipe["std"])
        )
    elif kind == "image_files":
        size = recipe.get("size")
        crop = recipe.get("crop")  # absent in runs made before crops: the whole image
        ok = recipe.get("mode") in ("L", "RGB") and isinstance(size, list) and len(size) == 2 and all(
            type(v) is int and 0 < v <= 1 << 14 for v in size
        ) and (crop is None or (type(crop) is float and 0 < crop <= 1))
    elif kind == "token_ids":
        vocab = recipe.get("vocab_size")
        ok = type(vocab) is int and vocab >= 1
    else:
        ok = kind == "bytes"
    if not ok:
        raise bad(f"preprocess {kind!r} is not one dlscale writes")


def build_from_spec(spec: dict[str, Any], module: nn.Module | type | None = None) -> nn.Module:
    """A fresh model shaped as the spec says (weights come separately): the zoo model by
    name, ``module`` (an instance, used as is, or a class built with the recorded
    arguments), or the recorded class imported by its path."""
    shape, outputs = tuple(spec["input_shape"]), spec["num_outputs"]
    if isinstance(module, nn.Module):
        return module
    if spec.get("model") is not None and module is None:
        model_info(spec["model"])  # an unknown name says so
        return build_model(spec["model"], shape, outputs)
    recorded = spec.get("module") or {}
    cls = module if module is not None else import_module_class(recorded.get("import_path", ""))
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"module= must be an nn.Module subclass or instance, got {cls!r}")
    kwargs = recorded.get("kwargs")
    if kwargs is None:
        if module is None:
            raise UserError(
                f"{cls.__name__} keeps its constructor arguments under other names, so the run cannot rebuild it alone; "
                f"pass an instance: dlscale.load(run, module={cls.__name__}(...))"
            )
        kwargs = {}
    try:
        return cls(**kwargs)
    except Exception as exc:  # the user's constructor: say what failed, in one line
        raise UserError(
            f"{cls.__name__}(**{kwargs}) failed ({type(exc).__name__}: {exc}); "
            f"pass an instance instead: dlscale.load(run, module={cls.__name__}(...))"
        ) from None


def import_module_class(import_path: str) -> type:
    """The nn.Module subclass named ``package.module:Class``; anything else is refused before
    it could be called."""
    if not _IMPORT_PATH.match(import_path):
        raise UserError(f"{import_path!r} is not an import path of the form package.module:Class")
    module_name, _, qualname = import_path.partition(":")
    top = module_name.split(".")[0]
    if module_name == "__main__" or top in sys.stdlib_module_names:
        raise UserError(
            f"the run's module {import_path} was defined in a script (or names a standard-library module), "
            "which dlscale does not import; pass the class: dlscale.load(run, module=YourClass)"
        )
    if any(part.startswith("_") for part in qualname.split(".")):
        raise UserError(f"{import_path} names a private attribute; pass the class: dlscale.load(run, module=YourClass)")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(
            f"cannot import {module_name} for the run's module {import_path} ({type(exc).__name__}: {exc}); "
            "install it or pass the class: dlscale.load(run, module=YourClass)"
        ) from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UserError(f"{import_path} is not an nn.Module class; dlscale calls only model classes")
    return obj
