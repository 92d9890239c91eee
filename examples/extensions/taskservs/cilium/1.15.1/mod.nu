# Cilium 1.15: eBPF networking for Kubernetes pods.

const VERSION = "1.15.1"

# Default settings; `config generate` takes the same names as flags.
export def defaults [] {
    {
        version: $VERSION
        port: 4240
        ipam: "kubernetes"
        kube_proxy_replacement: true
        hubble: false
    }
}

# The configuration to write on a server, as a record.
export def "config generate" [--port: int = 4240] {
    defaults | upsert port $port
}

# The steps that install cilium on a server, as a plan the orchestrator runs.
export def install [
    server: string
    --dry-run  # only report the plan
] {
    {
        server: $server
        component: "cilium"
        version: $VERSION
        dry_run: $dry_run
        steps: [
            {action: "packages", install: ["cilium-cli"]}
            {action: "write", path: "/etc/cilium/config", content: (config generate)}
            {action: "service", name: "cilium", state: "started", enabled: true}
        ]
    }
}

# How to tell that cilium runs well on a server.
export def check [server: string] {
    {server: $server, component: "cilium", version: $VERSION, port: 4240, probes: ["cilium status --wait" "cilium connectivity test"]}
}
