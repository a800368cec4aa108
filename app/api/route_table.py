"""The route table, read once: for a request path, the endpoint label its
metrics carry, whether it needs an API key, and whether drain waits for it.

Nothing here is a list kept by hand. A route declares what it is through its
tags (`PROBE`: health checks, open to anyone and never waited for; `SCRAPE`:
/metrics, open unless GATEWAY_METRICS_AUTH, never waited for); every other
route needs a key, counts against the key's rate limit, and is waited for
on drain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from starlette.routing import BaseRoute, Route

PROBE = "probe"
SCRAPE = "scrape"
OTHER = "other"  # the label of a path no route matches


@dataclass(frozen=True, slots=True)
class Endpoint:
    label: str  # the route template, e.g. /v1/models/{model_id}
    open: bool  # answered without an API key
    drained: bool  # SIGTERM's drain waits for requests in flight here
    limited: bool  # counts against the key's rate limit


_UNMATCHED = Endpoint(OTHER, open=False, drained=False, limited=True)


def _flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        # Newer FastAPI (0.16x) keeps an included router whole, as one entry.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


class Endpoints:
    def __init__(self, routes: Iterable[BaseRoute], protect_metrics: bool):
        self._table: list[tuple[re.Pattern[str], Endpoint]] = []
        for route in _flat(routes):
            if not isinstance(route, Route):
                continue
            tags = set(getattr(route, "tags", ()) or ())
            probe, scrape = PROBE in tags, SCRAPE in tags
            endpoint = Endpoint(
                route.path_format,
                open=probe or (scrape and not protect_metrics),
                drained=not (probe or scrape),
                limited=not (probe or scrape),
            )
            self._table.append((route.path_regex, endpoint))

    def match(self, path: str) -> Endpoint:
        for regex, endpoint in self._table:
            if regex.match(path):
                return endpoint
        return _UNMATCHED
