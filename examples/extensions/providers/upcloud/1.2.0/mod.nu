# UpCloud provider: servers through the UpCloud API 1.3.

const API = "https://api.upcloud.com/1.3"

def plan-for [cores: int, memory_gb: int] { $"($cores)xCPU-($memory_gb)GB" }

# Plan the creation of one server.
export def "server create" [
    hostname: string
    --zone: string = "fi-hel1"
    --cores: int = 2
    --memory-gb: int = 4
    --storage-gb: int = 50
] {
    {
        provider: "upcloud"
        method: "POST"
        url: $"($API)/server"
        body: {
            server: {
                hostname: $hostname
                zone: $zone
                plan: (plan-for $cores $memory_gb)
                storage_devices: {storage_device: [{action: "clone", size: $storage_gb, tier: "maxiops"}]}
            }
        }
    }
}

# Plan the deletion of one server and, unless told otherwise, its storage.
export def "server delete" [uuid: string, --keep-storage] {
    let query = if $keep_storage { "" } else { "?storages=1" }
    {provider: "upcloud", method: "DELETE", url: $"($API)/server/($uuid)($query)"}
}

# The zones this provider can place servers in.
export def zones [] { [fi-hel1 fi-hel2 de-fra1 nl-ams1 uk-lon1 us-nyc1 sg-sin1] }

# What the orchestrator must have set before using this provider.
export def check [] {
    {provider: "upcloud", api: $API, needs: [UPCLOUD_USERNAME UPCLOUD_PASSWORD]}
}
