"""python -m analysis.dose: see analysis/dose/__init__.py."""

import sys

from analysis.dose import main

sys.exit(main())
