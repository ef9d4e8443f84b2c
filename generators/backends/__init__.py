"""Model backends: vLLM offline, OpenAI-compatible HTTP, transformers. See base.py for the interface."""
