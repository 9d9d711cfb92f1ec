"""Contract suites: each device family's driver behaviour, written once, run over every backend it supports."""
