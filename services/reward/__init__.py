"""Reward / labelling: answer extraction and verification (pair builders and the service come next)."""
