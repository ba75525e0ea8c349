"""How many scales terrain expansion continues by default and how far apart they are.

The command line shows both in its help, so they live in a module without torch: every ``landformer`` command
builds the whole parser, and importing the terrain networks there would slow each one by seconds.
"""

from __future__ import annotations

SCALE_FACTOR = 4  # between the scales of a multi-scale expansion (outpaint.extend_right_multiscale)
EXPAND_SCALES = 2  # scales `terrain expand` continues by default: the map's own and one SCALE_FACTOR coarser
