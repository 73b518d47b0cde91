"""Shared test fixtures."""
import pytest


@pytest.fixture
def count_calls(monkeypatch):
    """count_calls(owner, name): replace owner.name by a spy that forwards each call and records its
    first argument (None without one); returns the list of records.  Undone after the test."""
    def spy_on(owner, name):
        calls = []
        orig = getattr(owner, name)

        def spy(*args, **kwargs):
            calls.append(args[0] if args else None)
            return orig(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
        return calls
    return spy_on
