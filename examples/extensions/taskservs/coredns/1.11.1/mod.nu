# CoreDNS 1.11: the DNS server that names services inside the cluster.

const VERSION = "1.11.1"

# Default settings; `config generate` takes the same names as flags.
export def defaults [] {
    {
        version: $VERSION
        port: 53
        domain: "cluster.local"
        upstream: ["1.1.1.1" "9.9.9.9"]
        cache_seconds: 30
    }
}

# The configuration to write on a server, as a record.
export def "config generate" [--port: int = 53] {
    defaults | upsert port $port
}

# The steps that install coredns on a server, as a plan the orchestrator runs.
export def install [
    server: string
    --dry-run  # only report the plan
] {
    {
        server: $server
        component: "coredns"
        version: $VERSION
        dry_run: $dry_run
        steps: [
            {action: "packages", install: ["coredns"]}
            {action: "write", path: "/etc/coredns/config", content: (config generate)}
            {action: "service", name: "coredns", state: "started", enabled: true}
        ]
    }
}

# How to tell that coredns runs well on a server.
export def check [server: string] {
    {server: $server, component: "coredns", version: $VERSION, port: 53, probes: ["dig @127.0.0.1 kubernetes.default.svc.cluster.local"]}
}
