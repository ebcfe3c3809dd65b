"""``python -m janusflow.cli ...``: the same entry point as the ``janusflow`` command."""

import sys

from janusflow.cli.main import main

sys.exit(main())
