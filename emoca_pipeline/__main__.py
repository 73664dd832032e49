"""``python -m emoca_pipeline`` is the ``emoca`` command."""

import sys

from emoca_pipeline.cli import main

sys.exit(main())
