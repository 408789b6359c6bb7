"""python -m analysis.report: see analysis/report/__init__.py."""

import sys

from analysis.report import main

sys.exit(main())
