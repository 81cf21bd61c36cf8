"""Storage: content-addressed chunks on disk and erasure-coded objects over the nodes.

Local, blocking building blocks (a trio service calls them through `trio.to_thread`):
`chunks` (the on-disk chunk store: atomic puts, verified reads, quota, pins, GC), `segmenter`
(a stream cut into segments), `sealing` (optional client-side encryption of segments),
`erasure` (RS(k, m) coding of a segment into shards, hash-checked), `manifest` (the object's
canonical description and id) and `placement` (rendezvous hashing of shards over live members).
"""
