"""Shared core: rasters, chips, configs, training, persistence and pictures. Imports no pipeline."""
