# containerd 1.7: the container runtime Kubernetes talks to over CRI.

const VERSION = "1.7.13"

# Default settings; `config generate` takes the same names as flags.
export def defaults [] {
    {
        version: $VERSION
        port: 1338
        root: "/var/lib/containerd"
        systemd_cgroup: true
        sandbox_image: "registry.k8s.io/pause:3.9"
    }
}

# The configuration to write on a server, as a record.
export def "config generate" [--port: int = 1338] {
    defaults | upsert port $port
}

# The steps that install containerd on a server, as a plan the orchestrator runs.
export def install [
    server: string
    --dry-run  # only report the plan
] {
    {
        server: $server
        component: "containerd"
        version: $VERSION
        dry_run: $dry_run
        steps: [
            {action: "packages", install: ["containerd.io=1.7.13-1" "runc"]}
            {action: "write", path: "/etc/containerd/config", content: (config generate)}
            {action: "service", name: "containerd", state: "started", enabled: true}
        ]
    }
}

# How to tell that containerd runs well on a server.
export def check [server: string] {
    {server: $server, component: "containerd", version: $VERSION, port: 1338, probes: ["ctr version" "crictl info"]}
}
