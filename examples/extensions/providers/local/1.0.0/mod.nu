# Local provider: the servers already exist; "create" only records how to reach them.

# Plan the registration of one existing server.
export def "server create" [
    hostname: string
    --address: string = "127.0.0.1"
    --ssh-user: string = "root"
    --ssh-port: int = 22
] {
    {provider: "local", action: "register", hostname: $hostname, address: $address, ssh: {user: $ssh_user, port: $ssh_port}}
}

# Forget a server; the machine itself is left alone.
export def "server delete" [hostname: string] {
    {provider: "local", action: "forget", hostname: $hostname}
}

# The single pseudo-zone of this provider.
export def zones [] { [local] }

# What the orchestrator must have before using this provider.
export def check [] {
    {provider: "local", needs: ["an SSH key the servers accept"]}
}
