"""`python -m backend.ml ...`: the command line (see `backend.ml.cli`)."""

import sys

from backend.ml.cli import main

sys.exit(main())
