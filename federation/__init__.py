"""Federation with partner institutions (issue 5)."""
