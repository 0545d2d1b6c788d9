"""Entry points: one run (`python -m experiments.run`), sweeps (`-m`), tables and plots."""
