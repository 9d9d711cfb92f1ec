"""Mobile enforcement terminals (the officer's handheld) as devices of the station.

``ca`` keeps the station's own small terminal CA; ``pairing`` turns a one-time code and a CSR into a
terminal certificate; ``server`` runs the mutual-TLS API (and the server-TLS-only pairing port) on the
``egw run`` loop; ``tus`` receives resumable uploads (tus 1.0). The contract is ``docs/terminal.md``
and ``docs/terminal-api.json``.
"""
