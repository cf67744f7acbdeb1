"""Fixity auditors (issue 4): scheduled re-verification and repair."""
