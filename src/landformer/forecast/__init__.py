"""Forecast a raster time series (the Human Modification index, or any other) several steps ahead.

``model.py`` holds the ConvLSTM encoder-forecaster and its masked loss, ``metrics.py`` the streaming masked
metrics and the persistence / linear-trend baselines, ``normalize.py`` the JSON-persisted scalers. This package
file imports nothing heavy so that ``landformer --help`` stays fast.
"""
