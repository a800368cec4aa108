"""The HTTP wing: routes, dependencies, middleware, API keys, rate limits, the
route table, rejections, header limits and the SSE response. Routes only do
HTTP. Per request the route is matched once and `send` wrapped once
(middleware.Exchange); every layer below reads them from the scope."""
