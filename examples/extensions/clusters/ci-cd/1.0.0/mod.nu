# CI/CD platform: a BuildKit farm for builds, PostgreSQL for pipeline state, Redis for the job queue.

# The shape of the cluster: which servers hold what.
export def layout [--runners: int = 3] {
    {
        build: {cluster: "buildkit"}
        database: {count: 1, taskservs: [postgres]}
        queue: {count: 1, taskservs: [redis]}
        runners: {count: $runners, taskservs: [containerd]}
    }
}

# Settings shared by the pipeline services.
export def "config generate" [--domain: string = "ci.example.internal"] {
    {
        url: $"https://($domain)"
        database_url: "postgres://ci@postgres.ci:5432/ci"
        queue_url: "redis://redis.ci:6379/0"
        buildkit_addr: "tcp://buildkitd.buildkit:1234"
    }
}

# The order in which the parts come up.
export def install-order [] { [buildkit postgres redis runners] }

# How to tell that the platform works end to end.
export def check [] {
    {cluster: "ci-cd", probes: ["pg_isready -h postgres.ci" "redis-cli -h redis.ci ping" "buildctl debug workers"]}
}
