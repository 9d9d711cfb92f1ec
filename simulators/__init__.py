"""Device simulators and the reference platform: the other end of every wire.

Simulators reuse ``firmware_bridge`` codecs but never import ``gateway`` or
``drivers``: a simulator is the device, not a mirror of our driver.
"""
