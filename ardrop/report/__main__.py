"""`python -m ardrop.report`: runs the report's command line (ardrop/report/cli.py)."""
import sys

from .cli import main

sys.exit(main())
