"""The embeddings pipeline."""
