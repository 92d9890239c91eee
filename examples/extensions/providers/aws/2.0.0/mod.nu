# Amazon Web Services provider 2.0.0: servers as EC2 instances.

const API_VERSION = "2016-11-15"

def instance-type [cores: int, memory_gb: int] {
    match [$cores $memory_gb] {
        [1 1] => "t3.micro"
        [2 4] => "t3.medium"
        [2 8] => "m6i.large"
        [4 16] => "m6i.xlarge"
        _ => "m6i.2xlarge"
    }
}

# Plan the creation of one server; nothing is called until the orchestrator runs the plan.
export def "server create" [
    hostname: string
    --zone: string = "eu-west-1a"
    --cores: int = 2
    --memory-gb: int = 4
    --image: string = "ubuntu-22.04"
    --spot  # use spot capacity
] {
    {
        provider: "aws"
        action: "RunInstances"
        api_version: $API_VERSION
        hostname: $hostname
        zone: $zone
        instance_type: (instance-type $cores $memory_gb)
        image: $image
        market: (if $spot { "spot" } else { "on-demand" })
    }
}

# Plan the deletion of one server.
export def "server delete" [hostname: string, --keep-storage] {
    {provider: "aws", action: "TerminateInstances", hostname: $hostname, keep_storage: $keep_storage}
}

# The zones this provider can place servers in.
export def zones [] {
    [eu-west-1a eu-west-1b eu-central-1a us-east-1a us-east-1b]
}

# What the orchestrator must have set before using this provider.
export def check [] {
    {provider: "aws", api_version: $API_VERSION, needs: [AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION]}
}
