"""``python -m clara_voice.client``: the smoke-test client's command line."""

from __future__ import annotations

import sys

from clara_voice.client.cli import main

sys.exit(main())
