"""Within-layer criteria. Each module registers its criterion (dlp.registry) when imported, and importing this
package imports every module in it: a new criterion is a file dropped here plus its conf/criterion YAML."""
from dlp.discover import import_submodules

import_submodules(__name__, __path__)
