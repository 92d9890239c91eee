"""The application's edges: what starts the service and what people and programs use to reach it.

    cli/           the `extension-loader` command (serve, dev, and the client subcommands)
    serve.py       assembles the parts from a configuration and runs them until a signal says stop
    client.py      LoaderClient, the small client the command line and the tests use
    publishing.py  publish, yank and search the registry; signing_states.py: the signed states a publisher builds on,
                   the types of dependencies, `refresh`; resigning.py: `resign` of the old format
    bundles.py     the bundle file that carries the registry to an air-gapped site; bundle_export.py writes one,
                   bundle_verify.py judges one with the site's pinned keys, bundle_import.py writes it there
    telemetry.py   which tracing, metrics and logging providers this process installs
    natsserver.py  a local nats-server (or a JetStream cluster of them), for `extension-loader dev`, the tests
                   and the benchmark
    schemas.py     writes schemas/ from the contract's structs and subjects table: the JSON Schemas of
                   schemas_json.py and the AsyncAPI document of schemas_asyncapi.py

The only layer that reads the environment and the command line. It may use every layer below it.
"""
