"""The job function the RQ worker runs: answer at once with a small JSON response."""

from __future__ import annotations

import json
from typing import Any

from harness import RESPONSE


def perform(request: str) -> dict[str, Any]:
    json.loads(request)
    return RESPONSE
