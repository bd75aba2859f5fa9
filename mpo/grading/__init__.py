"""Answers and verifiers: what the reward service labels with and the evaluation grades with."""
