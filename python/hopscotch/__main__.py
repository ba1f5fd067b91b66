"""`python -m hopscotch` is the `hopscotch` command."""

import sys

from .cli import main

sys.exit(main())
