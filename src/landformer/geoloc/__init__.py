"""The geoloc pipeline."""
