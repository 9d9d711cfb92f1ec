"""The reference platform: the other end of the gRPC evidence uplink.

It is what integrators test their own platforms against: a small CA that
enrols gateways, an ``EvidenceIngest`` server that stores uploads durably and
resumably, verifies them, and answers with receipts signed by the platform key.
Never imports ``gateway`` (the gateway's CLI may import this package).
"""
