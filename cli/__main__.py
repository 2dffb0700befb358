"""`python -m cli`: the aeknn command."""

import sys

from cli.main import main

sys.exit(main())
