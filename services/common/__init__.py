"""Plumbing shared by every gRPC service: server bootstrap, validation, auth, clients."""
