"""Plotly figure builders, one module per figure family. Results call them from ``.plot()``."""
