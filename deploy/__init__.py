"""What deploys the system: images, templates, the rollout, and the queue-backlog exporter.

Only `deploy.backlog_exporter` is installed in an image (the gateway's); it needs only `shared/`.
"""
