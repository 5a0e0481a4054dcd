"""The names of a run folder's files, one owner for all that read or write them: :mod:`reste.rundir` (the folder's
format), :mod:`reste.checkpoint` (which reads ``last.pt``), :mod:`reste.plugins` (which reads a resumed run's
``config.json`` before any parser is built) and the scripts beside the library. Imports nothing (no torch)."""

CONFIG = "config.json"  # the run's settings (TrainConfig.to_dict)
METRICS = "metrics.jsonl"  # one line per finished epoch
LAST, BEST = "last.pt", "best.pt"  # the checkpoint after the last finished epoch (or step), and the best epoch's
