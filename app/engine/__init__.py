"""The engine seam: `protocol` is what the app depends on, `vllm` builds the real one."""
