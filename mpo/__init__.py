"""OnlineMPO: online, iterative Mixed Preference Optimization for multimodal models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onlinempo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
