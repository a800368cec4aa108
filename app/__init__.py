"""ascend-llm-gateway: an OpenAI-compatible gateway around an in-process vLLM engine."""

__version__ = "0.1.0"
