"""dcloud-node: one process per host of the dcloud decentralized cloud."""

__version__ = "0.1.0"
