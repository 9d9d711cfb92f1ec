"""``python -m gateway`` runs the same entry point as the ``egw`` console script."""

import sys

from gateway.cli import main

sys.exit(main())
