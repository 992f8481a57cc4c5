"""The Hydra configs, importable as sae_sweep.conf in an installed wheel (Hydra needs a package)."""
