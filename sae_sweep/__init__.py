"""sae_sweep: sweep sparse autoencoders over (alpha, dictionary size) grids to count features."""

__version__ = "0.1.0"
