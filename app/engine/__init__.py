"""The engine seam: `protocol` is what the app depends on (and how an engine's
refusal is told), `vllm` builds the real one, `profiles` its arguments per
device, the reaper keeps it from outliving the gateway."""
