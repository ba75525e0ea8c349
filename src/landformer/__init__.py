"""landformer: deep generative and predictive models of the land surface."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("landformer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
