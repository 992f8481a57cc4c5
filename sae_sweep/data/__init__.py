"""Data sources: every source yields float32 batches y of shape (B, n) and a held-out eval set."""
