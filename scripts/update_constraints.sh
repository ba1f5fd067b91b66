#!/usr/bin/env bash
# Rewrites constraints.txt from a venv that passed CI (default .venv): the exact versions scripts/setup.sh installs,
# so the README's two commands give tomorrow what they gave on the day of the last green CI.
#   bash scripts/update_constraints.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
{
  echo "# Exact versions of the last green CI (scripts/update_constraints.sh $VENV, $(date -u +%Y-%m-%d))."
  echo "# scripts/setup.sh installs with -c constraints.txt; HOPSCOTCH_CONSTRAINTS=none installs the newest releases."
  # Local builds (file:// wheels, editable installs) are not registry versions: left out.
  "$VENV/bin/pip" freeze --all --exclude-editable --disable-pip-version-check 2>/dev/null |
    grep -v -e '^hopscotch' -e ' @ ' -e '^-e ' | LC_ALL=C sort -f
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages"
