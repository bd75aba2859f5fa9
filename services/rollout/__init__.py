"""Rollout service: vLLM (or transformers) engines in Ray actors behind one gRPC endpoint."""
