"""Transports: how a call reaches the server (gRPC, REST) or a test double (mock)."""
