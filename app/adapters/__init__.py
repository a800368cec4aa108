"""Task adapters: LoRA fine-tunes of the served model, checked, versioned,
loaded into the engine and unloaded once drained."""
