"""The peers that serve the same trained run: ``python servers.py NAME RUN PORT``.

    fastapi      a minimal FastAPI endpoint, no batching: a sync ``def`` (FastAPI runs it in
                 its thread pool), one request's samples per model call
    litserve     LitServe with batching: LitAPI(max_batch_size, batch_timeout), one worker
    dlscale-h11  dlscale's own app (``dlscale.serve.app.create_app``) on uvicorn's pure-Python
                 stack (asyncio loop, h11 parser) instead of uvloop and httptools: what the
                 faster HTTP stack buys

Every peer does the same work per sample as ``dlscale serve``: the JSON inputs through
``dlscale.inference.inputs.model_inputs`` (the run's saved preprocessing), the model of
``dlscale.load(RUN)`` in fp32 on the CPU, softmax, and {"predictions": [{"class", "probability"}]}.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import dlscale
from dlscale.inference.inputs import model_inputs


def prepare(model, inputs) -> torch.Tensor:
    return model_inputs(model.spec, np.asarray(inputs))[0]


def run_model(model, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model.outputs_of(x, prepared=True, batch_size=max(len(x), 1)), dim=-1)


def answer(probabilities: torch.Tensor) -> list[dict]:
    p, i = probabilities.max(dim=-1)
    return [{"class": c, "probability": q} for q, c in zip(p.tolist(), i.tolist())]


def fastapi_server(run: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    model = dlscale.load(run, device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: dict) -> dict:
        with torch.inference_mode():
            return {"predictions": answer(run_model(model, prepare(model, body["inputs"])))}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def litserve_server(run: str, port: int, max_batch_size: int, max_delay_ms: float) -> None:
    import litserve as ls

    from lit_api import API  # a module of its own: LitServe pickles the API into its worker process

    api = API(max_batch_size=max_batch_size, batch_timeout=max_delay_ms / 1000.0)
    api.run = run
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


def dlscale_h11_server(run: str, port: int, max_batch_size: int, max_delay_ms: float) -> None:
    import uvicorn

    from dlscale.serve.app import create_app

    app = create_app(dlscale.load(run, device="cpu"), max_batch_size=max_batch_size, max_delay_ms=max_delay_ms)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="asyncio", http="h11")


if __name__ == "__main__":
    name, run, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batch, delay = (int(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) > 5 else (32, 5.0)
    if name == "fastapi":
        fastapi_server(run, port)
    elif name == "litserve":
        litserve_server(run, port, batch, delay)
    elif name == "dlscale-h11":
        dlscale_h11_server(run, port, batch, delay)
    else:
        raise SystemExit(f"no server {name!r}")
