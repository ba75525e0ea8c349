"""Forecast a raster time series (the Human Modification index, or any other) several steps ahead.

``model.py`` holds the ConvLSTM encoder-forecaster and its masked loss, ``metrics.py`` the streaming masked
metrics and the persistence / linear-trend baselines, ``normalize.py`` the JSON-persisted scalers. ``config.py``
is the recipe, ``data.py`` turns rasters into windows with spatial and temporal hold-outs, ``task.py`` trains,
``export.py`` writes and loads the pickle-free inference model, ``evaluate.py`` scores it on held-out blocks,
``predict.py`` forecasts whole rasters tile by tile, ``plots.py`` draws, ``demo.py`` is the step of
``landformer demo`` and ``cli.py`` the ``landformer forecast`` commands. This package file imports nothing heavy
so that ``landformer --help`` stays fast.
"""
