"""Contracts every part of the system uses: settings, schemas, job store, storage, errors."""
