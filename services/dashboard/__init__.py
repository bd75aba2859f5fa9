"""The dashboard: a read-only web view of the online rounds, served by the controller (or from a store)."""
