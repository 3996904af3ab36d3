"""aigw's data plane: the gRPC server, Completion servicer, router, providers and telemetry."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aigw")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
