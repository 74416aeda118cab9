"""``python -m orchestrator``."""

from __future__ import annotations

import sys

from orchestrator.cli.entry import main

sys.exit(main())
