"""`charnn serve`: an OpenAI-compatible completions server with continuous batching and a playground page."""
