"""Refinements a criterion's masks can take (`refine=<name>`). Each module registers its refinement
(dlp.registry) when imported, and importing this package imports every module in it."""
from dlp.discover import import_submodules

import_submodules(__name__, __path__)
