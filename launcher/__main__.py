"""`python -m launcher` is `gangrun`."""

import sys

from launcher.cli import main

sys.exit(main())
