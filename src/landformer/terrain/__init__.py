"""The terrain pipeline."""
