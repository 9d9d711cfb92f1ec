"""Uplinks: delivering evidence to the platform (gRPC) — enrolment, the uploader."""
