"""`python -m tunneler` runs the command line."""

from __future__ import annotations

import sys

from tunneler.cli import main

sys.exit(main())
