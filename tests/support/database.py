"""Catalog database fixtures (filled in by the migrations work)."""
