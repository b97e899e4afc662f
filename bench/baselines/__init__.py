"""Baseline servers speaking the protocol subset the load generator uses.

`websockets_server` is what a typical Python implementation looks like; `picows_server` is
the floor of our own stack (picows + uvloop + msgspec, no features). Neither stores anything:
compare them with gurukul-fast on `memory:` storage.
"""
