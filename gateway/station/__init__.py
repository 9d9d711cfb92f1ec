"""``egw run``: the long-running station service (supervision, uplinks, screen, metrics)."""
