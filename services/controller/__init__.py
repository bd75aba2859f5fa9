"""Controller service: the online round loop and its durable run store."""
