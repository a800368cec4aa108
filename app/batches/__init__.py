"""Batches: the OpenAI Batch API run on idle engine time (work in progress)."""
