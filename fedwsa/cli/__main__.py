"""`python -m fedwsa.cli`: the `fedwsa` command."""

import sys

from fedwsa.cli import main

sys.exit(main())
