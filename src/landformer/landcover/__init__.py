"""Land-cover pipeline: a random-order autoregressive transformer (RandAR-style) over class maps.

``model.py`` holds the network (plain PyTorch), ``decoding.py`` the samplers and scores built on it, ``task.py`` the
Lightning task, ``train.py`` and ``export.py`` training and the inference bundle, ``apps/`` one module per command
family on a trained model and ``plots.py`` every picture; ``options.py`` and the ``cli*.py`` files are the command
line. Nothing is imported here so that ``landformer --help`` does not pay for importing torch.
"""
