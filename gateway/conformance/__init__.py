"""The conformance kit: the published contract run against any implementation.

``egw conformance platform HOST:PORT`` plays a gateway against a central platform's
``EvidenceIngest``; ``egw conformance mqtt URL --gateway ID`` listens to what a gateway
publishes. Both judge only by ``docs/`` (schemas, status codes, trust rules), never by
what our own implementation happens to do, and print one row per rule.
"""
