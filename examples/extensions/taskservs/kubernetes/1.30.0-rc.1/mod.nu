# Kubernetes 1.30.0-rc.1: control plane and workers set up with kubeadm.

use ./templates/kubeadm.nu

const VERSION = "1.30.0-rc.1"

# Default settings; `config generate` takes the same names as flags.
export def defaults [] {
    {
        version: $VERSION
        cluster_name: "kubernetes"
        pod_cidr: "10.244.0.0/16"
        service_cidr: "10.96.0.0/12"
        cri_socket: "unix:///run/containerd/containerd.sock"
        cni: "cilium"
    }
}

# The kubeadm ClusterConfiguration for these settings.
export def "config generate" [
    --cluster-name: string = "kubernetes"
    --endpoint: string = "127.0.0.1:6443"
    --pod-cidr: string = "10.244.0.0/16"
] {
    kubeadm cluster-configuration $VERSION $cluster_name $endpoint $pod_cidr
}

# The steps that install Kubernetes on a server, as a plan the orchestrator runs.
export def install [
    server: string
    --role: string = "control-plane"  # control-plane or worker
    --dry-run
] {
    let join = if $role == "control-plane" { "kubeadm init --config /etc/kubernetes/kubeadm.yaml" } else { "kubeadm join" }
    {
        server: $server
        component: "kubernetes"
        version: $VERSION
        role: $role
        dry_run: $dry_run
        steps: [
            {action: "packages", install: [$"kubelet=($VERSION)" $"kubeadm=($VERSION)" $"kubectl=($VERSION)"]}
            {action: "write", path: "/etc/kubernetes/kubeadm.yaml", content: (config generate)}
            {action: "run", command: $join}
        ]
    }
}

# How to tell that the node is healthy.
export def check [server: string] {
    {server: $server, component: "kubernetes", version: $VERSION, probes: ["kubectl get --raw /readyz" "kubectl get nodes"]}
}
