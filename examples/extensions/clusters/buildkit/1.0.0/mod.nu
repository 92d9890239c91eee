# BuildKit build farm: buildkitd daemons on Kubernetes, behind one service.

const BUILDKIT_IMAGE = "moby/buildkit:v0.12.5"

# The shape of the cluster: which taskservs go on which servers.
export def layout [--workers: int = 2] {
    {
        control_plane: {count: 1, taskservs: [containerd kubernetes]}
        workers: {count: $workers, taskservs: [containerd kubernetes]}
    }
}

# The Kubernetes objects that run BuildKit, as records.
export def "config generate" [--replicas: int = 2, --namespace: string = "buildkit"] {
    [
        {apiVersion: "v1", kind: "Namespace", metadata: {name: $namespace}}
        {
            apiVersion: "apps/v1"
            kind: "Deployment"
            metadata: {name: "buildkitd", namespace: $namespace}
            spec: {
                replicas: $replicas
                template: {spec: {containers: [{name: "buildkitd", image: $BUILDKIT_IMAGE, securityContext: {privileged: true}}]}}
            }
        }
    ]
}

# How to tell that the build farm answers.
export def check [] {
    {cluster: "buildkit", probes: ["buildctl --addr tcp://buildkitd.buildkit:1234 debug workers"]}
}
