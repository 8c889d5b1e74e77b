"""Celery workers: thin tasks on the predict, train and evaluate queues that call pipeline/.

`workers.listener` is a program of its own, the S3-event listener: it loads none of the tasks.
"""
