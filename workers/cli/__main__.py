"""``python -m workers.cli``: the ``liftstream`` command."""

import sys

from workers.cli import main

sys.exit(main())
