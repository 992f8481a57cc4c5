"""Feature-count estimation, figures and the sweep report."""
