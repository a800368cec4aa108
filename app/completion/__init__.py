"""The completion wing, with no FastAPI or Starlette: request schemas, prepare
(text and chat), the context limit, tokenizer, admission, generation, choices,
response formats, SSE framing and the service that composes them."""
