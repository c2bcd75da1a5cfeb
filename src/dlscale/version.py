"""The version of dlscale, on its own so that any module can say it without importing the package root."""

__version__ = "0.1.0"
