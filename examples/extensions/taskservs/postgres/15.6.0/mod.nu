# PostgreSQL 15: the relational database.

const VERSION = "15.6.0"

# Default settings; `config generate` takes the same names as flags.
export def defaults [] {
    {
        version: $VERSION
        port: 5432
        data_dir: "/var/lib/postgresql/15/main"
        max_connections: 200
        shared_buffers: "256MB"
    }
}

# The configuration to write on a server, as a record.
export def "config generate" [--port: int = 5432] {
    defaults | upsert port $port
}

# The steps that install postgres on a server, as a plan the orchestrator runs.
export def install [
    server: string
    --dry-run  # only report the plan
] {
    {
        server: $server
        component: "postgres"
        version: $VERSION
        dry_run: $dry_run
        steps: [
            {action: "packages", install: ["postgresql-15"]}
            {action: "write", path: "/etc/postgres/config", content: (config generate)}
            {action: "service", name: "postgresql@15-main", state: "started", enabled: true}
        ]
    }
}

# How to tell that postgres runs well on a server.
export def check [server: string] {
    {server: $server, component: "postgres", version: $VERSION, port: 5432, probes: ["pg_isready -h 127.0.0.1"]}
}

# The SQL that creates an application's database and role.
export def "database create" [name: string, --owner: string] {
    let owner = $owner | default $name
    [$"CREATE ROLE ($owner) LOGIN;" $"CREATE DATABASE ($name) OWNER ($owner);"]
}
