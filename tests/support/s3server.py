"""S3 server fixtures (filled in by the tiers work)."""
