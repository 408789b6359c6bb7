"""`python -m analysis.sharpness results_dir=DIR sweep=NAME [key=value ...]` (the Makefile's sharpness and report)."""

import sys

from analysis.sharpness.cli import main

sys.exit(main())
