"""Structured channel removal: channel dependency groups, importance, plans and the remove-channels pass."""
