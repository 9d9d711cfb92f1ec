"""The evidence core: content-addressed store, state database, identity, DSSE
signatures, manifests, the custody log and offline-verifiable bundles."""
