"""The projection tests share `fold_helpers` (events built with the factory, parsed)."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/projections/rules/ imports `fold_helpers` from here: pytest only puts each test
# file's own directory on sys.path (no __init__.py, so no package to import it through).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
