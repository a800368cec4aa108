"""Unique ids for requests and responses. A leaf."""

from __future__ import annotations

import itertools
import secrets

# Unique ids without a random draw per request: 64 random bits per process,
# then a counter (32 hex characters, like a uuid4's hex).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
