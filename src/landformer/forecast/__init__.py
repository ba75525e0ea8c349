"""Forecast a raster time series (the Human Modification index, or any other) several steps ahead.

``config.py`` is the recipe (its ``model`` section is the network's own config), ``model.py`` the ConvLSTM
encoder-forecaster and its masked loss (plain PyTorch), ``data.py`` turns rasters into windows with spatial and
temporal hold-outs, ``task.py`` is the LightningModule, ``train.py`` goes from a recipe to a run folder,
``export.py`` saves and loads the pickle-free inference model, ``evaluate.py`` scores it on held-out blocks,
``metrics.py`` holds the streaming masked metrics and the persistence / linear-trend baselines, ``predict.py``
forecasts whole rasters tile by tile, ``plots.py`` draws, ``demo.py`` is the step of ``landformer demo`` and
``cli.py`` the ``landformer forecast`` commands. This package file imports nothing heavy so that
``landformer --help`` stays fast.
"""
