"""Tiny models the project builds itself (no model hub): a Qwen2 text policy and a LLaVA-style one."""
