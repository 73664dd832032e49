"""``python -m emoca_pipeline`` is the ``emoca`` command."""

import sys

from emoca_pipeline.cli import main

# Dask's worker processes re-import the main module: the guard keeps them from re-running it.
if __name__ == "__main__":
    sys.exit(main())
