"""``python -m dynconfig_client``: the ``dynconfig`` command line."""

import sys

from .cli import main

sys.exit(main())
