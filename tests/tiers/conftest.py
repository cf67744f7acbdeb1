"""The conformance suites live in ``tiers.testing`` and ``tiers.testing_cold``, outside
the test tree: ask pytest to rewrite their asserts so failures show the compared values."""

import pytest

pytest.register_assert_rewrite("tiers.testing", "tiers.testing_cold")
