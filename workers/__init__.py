"""Celery workers: thin tasks on the predict, train and evaluate queues that call pipeline/."""
