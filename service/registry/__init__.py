"""The registry: extensions published once to NATS JetStream and fetched, verified, by any loader.

    archive.py         a folder as a reproducible archive (the same folder, the same bytes), and its safe unpacking
    signing.py         ed25519 nkeys: seeds, public keys, the signed statement of one release, its verification
    index.py           the index records: one per extension, each version a release
    buckets.py         the two buckets on JetStream, made (publisher) or bound (loaders) on one connection
    index_bucket.py    the index's Key-Value bucket: records read, written with compare-and-set, watched
    index_watch.py     the index watched with a pull consumer: current values, CAUGHT_UP, each change
    archive_bucket.py  the archives' Object Store bucket: an archive stored, described, deleted, fetched
    chunks.py          one archive's chunks read off its stream into a file, hashed as they arrive
    pull.py            the pull consumers both read with (no push consumer: readers may be in another account)
    calls.py           every call on JetStream bounded in time and under one API prefix, nats-py's errors ours
    errors.py          those errors: RegistryUnavailable, Conflict, ArchiveTooLarge
    names.py           the buckets' names, and the streams and subjects JetStream keeps them in
    mirror.py          at an edge site, how a bucket's mirror of the hub's stands (sequence, lag, last word)

It may use only the contract. It knows nothing of the cache or of requests: the core decides what to trust and
when to fetch, with the keys pinned in the configuration.
"""
