"""tunneld: an encrypted overlay that makes Kubernetes nodes on unconnected networks one cluster."""

__version__ = "0.3.0"
