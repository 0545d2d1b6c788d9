"""Layerwise allocations besides DLP (which the core holds: dlp.methods.dlp_allocation). Each module registers its
allocation (dlp.registry) when imported, and importing this package imports every module in it: a new
allocation is a file dropped here plus its conf/allocation YAML."""
from dlp.discover import import_submodules

import_submodules(__name__, __path__)
