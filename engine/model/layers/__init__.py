"""Model layers that call the engine's kernel set: paged attention, linears, rotary embeddings."""
