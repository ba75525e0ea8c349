"""The embedded default data: a procedural world and loaders for real data that ships inside packages."""
