"""The procedural world, split by concern: ``generate.py`` makes every layer in memory (the recipe is its
docstring), ``files.py`` writes them as GeoTIFFs + ``world.json`` and reads a written world back, ``render.py``
draws it. The names callers use are here, so ``from landformer.synth.world import make_world`` reads as before.
"""

from landformer.synth.world.files import CRS, MIN_SIZE, World, load_world, make_world
from landformer.synth.world.generate import DEVELOPED, HM_YEARS, generate_layers
from landformer.synth.world.render import render_world

__all__ = [
    "CRS",
    "DEVELOPED",
    "HM_YEARS",
    "MIN_SIZE",
    "World",
    "generate_layers",
    "load_world",
    "make_world",
    "render_world",
]
