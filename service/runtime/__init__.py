"""The runtime: what runs outside Python and what is watched on disk.

    runner.py     one `nu` process per cold load, running the project's loader module
    spares.py     such processes started ahead of their loads, each waiting for the one it will serve
    sandbox.py    how every such process is confined: limits, clean environment, process group, output cap
    nushell/      that loader module, `provisioning.nu`, which a person can run by hand too
    watcher.py    which extensions a round of changes on disk touched

It may use only the contract. It knows nothing of the cache, of requests or of NATS: the core calls it.
"""
