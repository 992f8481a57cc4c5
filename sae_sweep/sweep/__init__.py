"""The glue between sae_sweep and Hydra/Optuna: sweepers, a results-table callback, job-side hooks.

Thin by design: sweepers turn cells or trials into Hydra overrides, the job side (``job.py``) records
which cell a run is and reports to its Optuna trial; ``sae_sweep/table.py`` (below this package: the
analysis reads it too) turns finished run dirs into one results table. Hydra only instantiates plugins under ``hydra_plugins.``, so the classes here are
re-exported from ``hydra_plugins/sae_sweep_plugins``.
"""
