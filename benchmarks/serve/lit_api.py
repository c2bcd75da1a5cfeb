"""The LitServe peer's API (see servers.py): the same work per sample as dlscale serve."""

from __future__ import annotations

import litserve as ls
import torch

import dlscale
from servers import answer, prepare, run_model


class API(ls.LitAPI):
    run: str  # the run directory, set before the server starts

    def setup(self, device):
        self.model = dlscale.load(self.run, device="cpu")

    def decode_request(self, request):
        return prepare(self.model, request["inputs"])

    def batch(self, inputs):
        return torch.cat(list(inputs))

    def predict(self, x):
        with torch.inference_mode():
            return run_model(self.model, x)

    def unbatch(self, output):  # every request of the benchmark holds one sample
        return list(output.split(1))

    def encode_response(self, output):
        return {"predictions": answer(output)}
