"""Helpers that several test files share (tests/conftest.py holds the hooks and fixtures)."""
