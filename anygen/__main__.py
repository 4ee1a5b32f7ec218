"""`python -m anygen` == `anygen` (used by `accelerate launch -m anygen ...`)."""

import sys

from anygen.cli import main

sys.exit(main())
