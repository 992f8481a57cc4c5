"""The glue between sae_sweep and Hydra/Optuna: sweepers, a results-table callback, job-side hooks.

Thin by design: sweepers turn cells or trials into Hydra overrides, the job side (``job.py``) records
which cell a run is and reports to its Optuna trial, and ``table.py`` turns finished run dirs into one
results table. Hydra only instantiates plugins under ``hydra_plugins.``, so the classes here are
re-exported from ``hydra_plugins/sae_sweep_plugins``.
"""
