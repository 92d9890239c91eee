"""The registry: extensions published once to NATS JetStream and fetched, verified, by any loader.

    archive.py    a folder as a reproducible archive (the same folder, the same bytes), and its safe unpacking
    signing.py    ed25519 nkeys: seeds, public keys, the signed statement of one release, its verification
    index.py      the index records in the Key-Value bucket: one per extension, each version a release
    jetstream.py  the two buckets on JetStream: the index (Key-Value) and the archives (Object Store)

It may use only the contract. It knows nothing of the cache or of requests: the core decides what to trust and
when to fetch, with the keys pinned in the configuration.
"""
