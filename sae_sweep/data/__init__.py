"""Data sources: every source yields float32 batches y of shape (B, n) and a held-out eval set; and the
activation cache that writes the real ones (extract.py, from a transformer: lm.py, on text: corpus.py)."""
