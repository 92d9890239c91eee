# Redis 7.2: the in-memory store used for queues and caches.

const VERSION = "7.2.4"

# Default settings; `config generate` takes the same names as flags.
export def defaults [] {
    {
        version: $VERSION
        port: 6379
        maxmemory: "256mb"
        maxmemory_policy: "allkeys-lru"
        appendonly: true
    }
}

# The configuration to write on a server, as a record.
export def "config generate" [--port: int = 6379] {
    defaults | upsert port $port
}

# The steps that install redis on a server, as a plan the orchestrator runs.
export def install [
    server: string
    --dry-run  # only report the plan
] {
    {
        server: $server
        component: "redis"
        version: $VERSION
        dry_run: $dry_run
        steps: [
            {action: "packages", install: ["redis-server"]}
            {action: "write", path: "/etc/redis/config", content: (config generate)}
            {action: "service", name: "redis-server", state: "started", enabled: true}
        ]
    }
}

# How to tell that redis runs well on a server.
export def check [server: string] {
    {server: $server, component: "redis", version: $VERSION, port: 6379, probes: ["redis-cli ping"]}
}
