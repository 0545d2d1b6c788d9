"""DLP benchmark suite: one engine walks a model block by block; an allocation decides how sparse each
block is; a criterion decides which weights inside a matrix go."""
