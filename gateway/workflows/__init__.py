"""Workflows: what the gateway does with each kind of device (dock, rapid test, signing)."""
