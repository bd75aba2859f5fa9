"""The gRPC services (rollout, reward, controller) hosted as Ray actors; see docs/architecture.md."""
