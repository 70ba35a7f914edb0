"""pytest runs with --import-mode=importlib (no sys.path changes): make relation_reference importable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
