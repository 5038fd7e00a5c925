"""What the test files share (see ``tests/__init__.py``)."""
