"""Prompt data: the one record format, built-in reasoning tasks, and the loader for users' files."""
