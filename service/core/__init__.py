"""The core: what the service knows about extensions, with no NATS in sight.

    manager.py    what a request asks of the core: load, reload, unload, status, discover, stats
    cache.py      the LRU cache of loaded extensions, and each extension's revision
    runs.py       a cold load of one version: single flight (flights.py), the Nushell run, caching its result
    tree_loads.py a load with dependencies: independent ones at once, failing as install order would
    events.py     the events each change causes; statistics.py: the counters behind `extensions.stats`
    store.py      the extension roots on disk, with the registry's versions merged in: which version a request means
    folders.py    what one extension folder holds (metadata.toml, its times, its digest); version_info.py: one
                  version as the store knows it; listing.py: how `discover` lists an extension
    releases.py   the registry's index as this loader sees it: its releases, yanks, what each update changed
    trust.py      whether a release is trusted here: a pinned signer, allowed for it, whose signature verifies
    fetching.py   a release's archive downloaded, checked against its signed digest, and unpacked for a load
    saved_index.py  the index kept on disk (index.json), for a start without JetStream
    registry_access.py  how the registry is reached now: the buckets last opened, whether the index is followed
    dependencies.py  which version of each dependency a load needs
    versions.py   versions and constraints (semantic versions, the contract's pre-release rule)
    graph.py      a dependency tree as the graph reply (JSON, DOT, Mermaid)
    reconcile.py  bringing the cache in step with the disk after a change (hot reload, removal, new version)
    slices.py     long work (a discover of a large tree) done on the event loop a slice at a time
    audit.py      one audit line per change of state; metrics.py: the OpenTelemetry instruments

It may use the runtime, the registry and the contract. The wire's follower tells it what the registry's index
holds, and how the registry is reached (`registry_access.py`). It returns events; sending them, and everything
else on the wire, is the wire's job.
"""
