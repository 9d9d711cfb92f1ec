"""Uplinks to the platform: gRPC (evidence uploads, enrolment) and MQTT (events, results, commands)."""
