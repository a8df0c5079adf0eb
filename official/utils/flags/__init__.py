"""Flag definitions of the trainer (absl)."""
