"""``python -m dynsparse``: the command line."""

import sys

from dynsparse.cli import main

sys.exit(main())
