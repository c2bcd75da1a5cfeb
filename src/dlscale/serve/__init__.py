"""``dlscale serve``: a trained run behind HTTP, with dynamic batching (``batcher``), Prometheus
metrics (``metrics``), the Starlette app (``app``) and the uvicorn server (``server``)."""

from dlscale.serve.server import serve

__all__ = ["serve"]
