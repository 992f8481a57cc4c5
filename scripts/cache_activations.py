"""Write activation shards: the entry /work/shared/design.md names for the activation cache.

    python scripts/cache_activations.py [--config FILE] [options]      (same options as below)
    python -m sae_sweep.cache ...                                      (the same command)

A thin wrapper: every option, check and message is sae_sweep.cache's (see its --help); this file holds
no logic of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_sweep.cache import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
