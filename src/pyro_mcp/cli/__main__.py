"""``python -m pyro_mcp.cli``: the ``pyro`` command (as pyro-mcp 4.5 runs it)."""

import sys

from pyro_mcp.cli.main import main

sys.exit(main())
