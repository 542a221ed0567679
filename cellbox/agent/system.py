"""The agent's own state: health and version."""

from __future__ import annotations

import os
import time

from . import VERSION
from .http import Request, Response, Router, json_response

router = Router()
_STARTED = time.time()


@router.route("GET", "/health")
def health(request: Request) -> Response:
    return json_response({"status": "ok", "version": VERSION, "pid": os.getpid(), "started_at": _STARTED})
