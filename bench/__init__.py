"""Benchmarks: the gateway against vLLM's own OpenAI server and the in-process ceiling."""
