"""Transports over the engine: gRPC, HTTP (metrics, usage), rule reload and the CLI."""
