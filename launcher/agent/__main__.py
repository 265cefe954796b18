"""`python -m launcher.agent` takes exactly torchrun's argv."""

import sys

from launcher.agent.main import main

sys.exit(main())
