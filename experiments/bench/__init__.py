"""Speed and memory: `python -m experiments.bench` times each phase of a run against the machine's own matmul
rate (run.py: the phases, report.py: the Markdown and its targets, flops.py: the arithmetic counted from the
model's shapes, machine.py: the machine's peak and memory, profile.py: where a forward spends its time,
precisions.py: the dtypes compared, shapes.py: real models' shapes for random-weight runs), sparse24.py the 2:4
kernels on a GPU, offload.py one run with its blocks in three places and rounding.py how far a cell moves
when only the order of its sums changes, against its seeds' spread."""
