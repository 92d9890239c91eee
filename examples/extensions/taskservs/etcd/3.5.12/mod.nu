# etcd 3.5: the key-value store that holds Kubernetes' state.

const VERSION = "3.5.12"

# Default settings; `config generate` takes the same names as flags.
export def defaults [] {
    {
        version: $VERSION
        port: 2379
        peer_port: 2380
        data_dir: "/var/lib/etcd"
        snapshot_count: 10000
    }
}

# The configuration to write on a server, as a record.
export def "config generate" [--port: int = 2379] {
    defaults | upsert port $port
}

# The steps that install etcd on a server, as a plan the orchestrator runs.
export def install [
    server: string
    --dry-run  # only report the plan
] {
    {
        server: $server
        component: "etcd"
        version: $VERSION
        dry_run: $dry_run
        steps: [
            {action: "packages", install: ["etcd"]}
            {action: "write", path: "/etc/etcd/config", content: (config generate)}
            {action: "service", name: "etcd", state: "started", enabled: true}
        ]
    }
}

# How to tell that etcd runs well on a server.
export def check [server: string] {
    {server: $server, component: "etcd", version: $VERSION, port: 2379, probes: ["etcdctl endpoint health" "etcdctl endpoint status"]}
}
