"""Test helpers, imported explicitly: builders (build), the CLI (cli), sweeps (sweep), W&B offline runs."""
