"""Gossip: membership and failure detection (SWIM + Lifeguard), emergent regional leaders,
signed heartbeats and region summaries.

`swim` is a sans-IO core (no I/O, no clock, no randomness of its own), `swim_messages` its
wire format, `leader` pure functions over a membership view; `service` is the trio driver.
"""
