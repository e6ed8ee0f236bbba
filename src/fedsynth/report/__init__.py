"""Run directory, metric records, figures."""

from .plots import plot_fd
from .rundir import RunDir, read_metrics

__all__ = ["RunDir", "read_metrics", "plot_fd"]
