"""Uplinks to the platform: MQTT (events, results, commands) and gRPC (evidence uploads)."""
