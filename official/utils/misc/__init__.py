"""Distribution and training helpers."""
