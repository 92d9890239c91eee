# kubeadm documents, built as records.

export def cluster-configuration [version: string, name: string, endpoint: string, pod_cidr: string] {
    {
        apiVersion: "kubeadm.k8s.io/v1beta3"
        kind: "ClusterConfiguration"
        kubernetesVersion: $"v($version)"
        clusterName: $name
        controlPlaneEndpoint: $endpoint
        networking: {podSubnet: $pod_cidr, serviceSubnet: "10.96.0.0/12"}
    }
}
