"""`python -m hopscotch_ext`: print what was built and what loaded; exit 1 if the compiled module did not load."""

import json
import sys

import hopscotch_ext

info = hopscotch_ext.info()
print(json.dumps(info, indent=2))
sys.exit(0 if info["loaded"] else 1)
