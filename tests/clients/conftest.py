"""The clients' tests start real servers with the app tests' process helpers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "streamcore_server"))
