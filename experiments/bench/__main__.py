"""`python -m experiments.bench`: the benchmark (experiments.bench.run)."""
import sys

from .run import main

sys.exit(main())
