"""The commands that use a trained land-cover model, one module per command family.

``sampling`` (maps from scratch, and the one batched way to draw maps), ``animation``, ``inpainting``
(inpaint, inpaint-eval), ``scoring`` (perplexity, info), ``gibbs``, ``embedding`` (embed-plot), ``development``
(dev-prob), ``panorama`` and ``realism`` (evaluate); ``common`` holds what they share. Each function takes the
model (a run folder, or a :class:`~landformer.landcover.export.LoadedModel` and its network) and plain arrays,
writes its outputs under ``out`` and returns what it measured; ``landcover/cli.py`` and ``cli_apps.py`` are thin
shells over them, and every picture comes from :mod:`landformer.landcover.plots`.
"""
