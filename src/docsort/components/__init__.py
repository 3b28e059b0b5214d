"""KFP components for docsort: thin shims that call one docsort stage each.

``stages`` holds the components; ``k8s`` holds every Kubernetes task setting
(GPU, tolerations, secrets, /dev/shm, retries, caching) in one place.
"""
