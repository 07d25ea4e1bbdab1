"""Deciding what a mail belongs to: pure functions over typed values, no I/O."""
