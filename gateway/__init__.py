"""The HTTP gateway: jobs, server-sent events, predictions, the model registry and uploads.

It imports `shared/` only: never torch, transformers or `pipeline/`.
"""
