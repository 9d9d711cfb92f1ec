"""Uplinks: delivering evidence to the platform (gRPC) — enrolment, the uploader."""
"""Uplinks to the platform: MQTT (events, results, commands) and gRPC (evidence uploads)."""
