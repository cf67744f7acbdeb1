"""Permafrost: a research-data preservation archive."""
