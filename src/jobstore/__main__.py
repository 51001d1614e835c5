"""``python -m jobstore``."""

import sys

from .cli import main

sys.exit(main())
