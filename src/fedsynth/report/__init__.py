"""Run directory, metric records, figures."""

from .plots import fd_series, plot_fd, series_name
from .rundir import RunDir, read_metrics

__all__ = ["RunDir", "read_metrics", "plot_fd", "fd_series", "series_name"]
