"""The S3-event listener: storage events (SQS on AWS, the local store's webhook) to pipeline jobs.

A program of its own beside the Celery workers: it sends each job's first task by name and
imports neither torch nor `pipeline/` nor the workers' tasks.
"""
