"""Plots and static reports of run directories (no metric computation here)."""
from tunelens.report.plots import plot_trajectory

__all__ = ["plot_trajectory"]
