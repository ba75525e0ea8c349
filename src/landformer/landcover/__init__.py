"""Land-cover pipeline: a random-order autoregressive transformer (RandAR-style) over class maps.

``model.py`` holds the network (plain PyTorch), ``decoding.py`` the samplers and scores built on it. Nothing is
imported here so that ``landformer --help`` does not pay for importing torch.
"""
