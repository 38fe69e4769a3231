"""Developer tools: render the Kubernetes manifests of a stack, and gate them on policy."""
