"""``python -m nbgateway.management.cli``: the same as ``nbgateway-admin``."""

import sys

from nbgateway.management.cli import main

sys.exit(main())
