"""Shared runtime for llmroute's gRPC services: server bootstrap, errors, logging, validation."""
