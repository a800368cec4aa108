"""The HTTP wing: routes, dependencies, middleware, API keys, rate limits, the
route table, rejections, header limits and the SSE response. Routes only do HTTP."""
