"""Hydra entry points for sae_sweep's sweepers and launcher (the code lives in ``sae_sweep.sweep``).

Hydra instantiates a sweeper or launcher only when its ``_target_`` starts with ``hydra_plugins.``
and it finds the class by ``__module__ + __name__``, so each plugin gets an empty subclass defined
here; this module also registers their configs as ``hydra/sweeper=sae_grid``,
``hydra/sweeper=sae_optuna`` and ``hydra/launcher=packed``.
"""

from hydra.core.config_store import ConfigStore

from sae_sweep.sweep import grid, optuna_sweeper, packed

__all__ = ["PackedLauncher", "SaeGridSweeper", "SaeOptunaSweeper"]


class SaeGridSweeper(grid.SaeGridSweeper):
    """Hydra's basic sweeper plus grid resume and a failure budget (see sae_sweep.sweep.grid)."""


class SaeOptunaSweeper(optuna_sweeper.SaeOptunaSweeper):
    """Optuna ask/tell sweeper with study resume, pruning and failures (see sae_sweep.sweep.optuna_sweeper)."""


class PackedLauncher(packed.PackedLauncher):
    """Trains a batch of jobs as packs on shared batches, one process (see sae_sweep.sweep.packed)."""


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="sae_grid", node=grid.GridSweeperConf, provider="sae_sweep")
cs.store(group="hydra/sweeper", name="sae_optuna", node=optuna_sweeper.OptunaSweeperConf, provider="sae_sweep")
cs.store(group="hydra/launcher", name="packed", node=packed.PackedLauncherConf, provider="sae_sweep")
