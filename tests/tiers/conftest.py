"""The conformance suite lives in ``tiers.testing``, outside the test tree: ask pytest
to rewrite its asserts so failures show the compared values."""

import pytest

pytest.register_assert_rewrite("tiers.testing")
