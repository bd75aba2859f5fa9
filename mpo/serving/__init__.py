"""gRPC plumbing shared by every service and the trainer: server bootstrap, validation, auth, clients."""
