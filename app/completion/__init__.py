"""The completion wing, with no FastAPI or Starlette. A request goes through
it in one direction: schemas -> prepare (text; chat's messages in chat) under
every context rule (context_limit) -> admission -> generation (its engine
requests in fan_in) -> choices -> the OpenAI shapes and their SSE framing
(wire), whole (service) or streamed (stream). `assembly.build_service` wires
it once from settings, the engine, metrics and the ledger."""
