"""The ML library: ingest, validation, training, evaluation, registry, serving."""
