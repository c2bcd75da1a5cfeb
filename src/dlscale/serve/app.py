"""The HTTP API of ``dlscale serve``: a Starlette app around a loaded ``dlscale.Model``.

    POST /predict   {"inputs": [...]} (one sample or a list) or an image upload (field "file")
    POST /generate  {"prompt": "...", "max_new_tokens": 50, "temperature": 0.8, "top_k": null}
                    (a prompt of token ids, [464, 2068, ...], continues as ids)
    GET  /health    200 while the process is up
    GET  /ready     200 once the model is loaded and has run one warm-up batch
    GET  /model     what the model takes and gives, and the batching settings (for clients
                    such as ``dlscale bench serve``)
    GET  /metrics   Prometheus text
    GET  /          a page to try it from a browser

Samples of concurrent /predict requests are batched (``serve.batcher``). A bad request gets
a 4xx JSON {"error": ...} and the server goes on; nothing in a request names a file on the
server (inputs must be numbers, text only for language models)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
from typing import Any, AsyncGenerator, Awaitable, Callable

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dlscale.errors import UserError
from dlscale.inference.inputs import model_inputs
from dlscale.inference.model import Model
from dlscale.serve.batcher import DynamicBatcher, QueueFull
from dlscale.serve.metrics import Metrics
from dlscale.serve.settings import ServingSettings, run_padded

MAX_NEW_TOKENS = 2048
MAX_IMAGE_PIXELS = 50_000_000  # a small file can declare a huge image: refuse before decoding
RETRY_AFTER_S = 1


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def create_app(
    model: Model,
    max_batch_size: int = 32,
    max_delay_ms: float = 5.0,
    max_queue: int = 1024,
    max_body_mb: float = 8.0,
    max_inputs: int = 1024,
    settings: ServingSettings | None = None,
) -> Starlette:
    """The app around ``model``, run as ``settings`` decided (``serve.settings.resolve``;
    None: eager, in the model's precision)."""
    settings = settings or ServingSettings(model.precision, False, None, reason="as loaded")
    metrics = Metrics()
    run_batch = _batch_runner(model, settings)
    batcher = DynamicBatcher(run_batch, max_batch_size, max_delay_ms, max_queue, metrics)
    max_body = int(max_body_mb * 1024 * 1024)
    state = {"ready": False}

    async def predict(request: Request) -> Response:
        body = await _read_body(request, max_body)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            x = await _upload(model, request, body)
        else:
            x = _json_inputs(model, _json(body))
        if len(x) > max_inputs:
            raise HTTPError(413, f"{len(x)} samples in one request; at most {max_inputs} (--max-inputs)")
        try:
            if model.is_language_model:  # prompts of other lengths cannot share a batch
                out = await batcher.run_in_worker(run_batch, x)
            else:
                out = await batcher.submit(x)
        except QueueFull as exc:
            raise HTTPError(503, f"the server is busy: {exc}; retry later", {"Retry-After": str(RETRY_AFTER_S)}) from None
        return JSONResponse({"predictions": _predictions(model, out)})

    async def generate(request: Request) -> Response:
        if not model.is_language_model:
            raise HTTPError(400, "this run is not a language model: POST /predict instead")
        body = _json(await _read_body(request, max_body))
        prompt = body.get("prompt") if isinstance(body, dict) else None
        ids = isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt)
        if not ((isinstance(prompt, str) and prompt) or ids):
            raise HTTPError(400, 'give {"prompt": "some text"} or {"prompt": [token ids]}')
        max_new = _number(body, "max_new_tokens", 50, int, 1, MAX_NEW_TOKENS)
        temperature = _number(body, "temperature", 0.8, float, 0.0, 100.0)
        top_k = _number(body, "top_k", None, int, 1, 1 << 20)
        seed = _number(body, "seed", None, int, 0, 2**63 - 1)
        text = await batcher.run_in_worker(
            lambda: model.generate(prompt, max_new_tokens=max_new, temperature=temperature, top_k=top_k, seed=seed)
        )
        return JSONResponse({"prompt": prompt, "completion": text})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if state["ready"]:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "loading"}, status_code=503)

    async def describe(request: Request) -> Response:
        spec = model.spec
        return JSONResponse({
            "model": spec.get("model") or (spec.get("module") or {}).get("import_path"),
            "input_kind": spec["input_kind"],
            "input_shape": list(spec["input_shape"]),
            "num_outputs": spec["num_outputs"],
            "targets": spec["targets"],
            "class_names": model.class_names,
            "device": str(model.device),
            "precision": model.precision,
            "settings": settings.describe(),
            "max_batch_size": max_batch_size,
            "max_delay_ms": max_delay_ms,
            "max_inputs": max_inputs,
        })

    async def metrics_text(request: Request) -> Response:
        pending = f"# HELP dlscale_queue_requests Requests waiting for a batch.\n# TYPE dlscale_queue_requests gauge\ndlscale_queue_requests {batcher.pending}\n"
        return PlainTextResponse(metrics.text() + pending, media_type="text/plain; version=0.0.4")

    async def page(request: Request) -> Response:
        return HTMLResponse(_page(model))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncGenerator[None, None]:
        async def warm_up() -> None:
            shape = (1, *model.spec["input_shape"])
            x = torch.zeros(shape, dtype=torch.long if model.is_language_model else torch.float32)
            await batcher.run_in_worker(run_batch, x)
            state["ready"] = True

        task = asyncio.get_running_loop().create_task(warm_up())
        try:
            yield
        finally:
            task.cancel()
            batcher.close()

    routes = [
        Route("/predict", _counted("/predict", metrics, predict), methods=["POST"]),
        Route("/generate", _counted("/generate", metrics, generate), methods=["POST"]),
        Route("/health", _counted("/health", metrics, health), methods=["GET"]),
        Route("/ready", _counted("/ready", metrics, ready), methods=["GET"]),
        Route("/model", _counted("/model", metrics, describe), methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics
    return app


def _counted(endpoint: str, metrics: Metrics, handler: Callable[[Request], Awaitable[Response]]) -> Callable:
    """The handler with its answer counted, and a bad request turned into a JSON error."""

    async def wrapped(request: Request) -> Response:
        try:
            response = await handler(request)
        except HTTPError as exc:
            response = JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)
        except UserError as exc:
            response = JSONResponse({"error": str(exc)}, status_code=400)
        except Exception as exc:  # a bug or a model failure: one 500, the server goes on
            response = JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)
        metrics.request(endpoint, response.status_code)
        return response

    return wrapped


def _batch_runner(model: Model, settings: ServingSettings) -> Callable[[torch.Tensor], torch.Tensor]:
    """Model batch -> class probabilities (classifiers, next tokens) or values (regression)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        out = run_padded(model, x, settings)
        return out if model.is_regression else torch.softmax(out, dim=-1)

    return run


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"the body has {int(declared)} bytes; at most {limit} (--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the body is over {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"the body is not valid JSON ({exc})") from None
    except RecursionError:
        raise HTTPError(400, "the body is JSON nested too deeply") from None


def _json_inputs(model: Model, body: Any) -> torch.Tensor:
    if not isinstance(body, dict) or "inputs" not in body:
        raise HTTPError(400, 'give {"inputs": [...]}: one sample or a list of samples')
    inputs = body["inputs"]
    if model.is_language_model:
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs)):
            return model_inputs(model.spec, inputs)[0]
    try:  # numbers only: a string could name a file on the server
        array = np.asarray(inputs)
    except ValueError:
        raise HTTPError(400, "inputs are ragged: every sample must have the same shape") from None
    if array.dtype.kind not in "biuf" or array.size == 0:
        raise HTTPError(400, f"inputs must be non-empty arrays of numbers{' or text' if model.is_language_model else ''}")
    return model_inputs(model.spec, array)[0]


async def _upload(model: Model, request: Request, body: bytes) -> torch.Tensor:
    """The uploaded image (field "file") as a batch of one, prepared as ``predict`` prepares files."""
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=10).parse()
    except MultiPartException as exc:
        raise HTTPError(400, f"bad multipart upload: {exc.message}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPError(400, 'upload the image as the form field "file"')
    return image_tensor(model.spec, await upload.read())


def image_tensor(spec: dict[str, Any], data: bytes) -> torch.Tensor:
    """Image bytes as the model's batch of one, decoded as ``inference.inputs.image_batch``
    decodes files."""
    from PIL import Image, UnidentifiedImageError

    from dlscale.data import preprocess

    shape = tuple(spec["input_shape"])
    if spec["input_kind"] != "image" or len(shape) != 3:
        raise HTTPError(400, f"the model takes samples of shape {shape}, not images; POST JSON {{\"inputs\": [...]}}")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise HTTPError(400, f"the image has {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS} in all")
        image.load()
    except UnidentifiedImageError:
        raise HTTPError(400, "the upload is not an image this server can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise HTTPError(400, f"the upload is not a readable image ({exc})") from None
    channels, height, width = shape
    recipe = spec.get("preprocess") or {}
    if recipe.get("kind") == "image_files":
        return torch.from_numpy(preprocess.decode_image(image, recipe["mode"], tuple(recipe["size"]), recipe.get("crop")))[None]
    if channels not in (1, 3):
        raise HTTPError(400, f"the model takes {channels}-channel inputs, which images cannot give")
    unit = (preprocess.decode_image(image, "L" if channels == 1 else "RGB", (width, height)) + 1.0) / 2.0
    if recipe.get("kind") == "standardise":
        return preprocess.prepare_arrays(dict(recipe, uint8_pixels=False, raw_scale=1.0), unit[None], shape)
    return torch.from_numpy(unit)[None]


def _predictions(model: Model, out: torch.Tensor) -> list[dict[str, Any]]:
    if model.is_regression:
        return [{"value": row[0] if len(row) == 1 else row} for row in out.reshape(len(out), -1).tolist()]
    probability, index = out.max(dim=-1)
    names = model.class_names
    rows = []
    for p, i in zip(probability.tolist(), index.tolist()):
        row: dict[str, Any] = {"class": i, "probability": p}
        if names and i < len(names):
            row["label"] = names[i]
        rows.append(row)
    return rows


def _number(body: dict, key: str, default: Any, kind: type, low: float, high: float) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HTTPError(400, f"{key} must be {'an integer' if kind is int else 'a number'}")
    if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise HTTPError(400, f"{key} must be between {low:g} and {high:g}")
    if kind is int and value != int(value):
        raise HTTPError(400, f"{key} must be an integer")
    return kind(value)


def _page(model: Model) -> str:
    text = model.is_language_model
    form = (
        '<textarea id="prompt" rows="4" cols="60">Once upon a time</textarea><br><button id="go">Generate</button>'
        if text
        else '<input type="file" id="file" accept="image/*"> <button id="go">Predict</button>'
    )
    return _PAGE.replace("{{TITLE}}", _html_escape(repr(model))).replace("{{FORM}}", form).replace("{{TEXT}}", "true" if text else "false")


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>dlscale serve</title>
<style>body{font-family:sans-serif;margin:2em;max-width:50em} pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}</style>
</head><body>
<h1>dlscale serve</h1><p>{{TITLE}}</p>
{{FORM}}
<pre id="answer"></pre>
<script>
const isText = {{TEXT}};
document.getElementById("go").addEventListener("click", async () => {
  const answer = document.getElementById("answer");
  answer.textContent = "...";
  let response;
  if (isText) {
    response = await fetch("/generate", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({prompt: document.getElementById("prompt").value, max_new_tokens: 100})});
  } else {
    const file = document.getElementById("file").files[0];
    if (!file) { answer.textContent = "choose an image first"; return; }
    const form = new FormData(); form.append("file", file);
    response = await fetch("/predict", {method: "POST", body: form});
  }
  const body = await response.json();
  answer.textContent = isText && body.completion !== undefined ? body.prompt + body.completion : JSON.stringify(body, null, 2);
});
</script>
</body></html>
"""
