"""``python -m workers.cli``: the ``liftstream`` command."""

import sys

from workers.cli import main

if __name__ == "__main__":  # not when a spawned child (the API's compute processes) imports it
    sys.exit(main())
