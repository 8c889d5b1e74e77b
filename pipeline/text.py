"""The text cleaning function, kept in shared/text.py so that the gateway cleans feedback texts
exactly as training does without importing the ML stack; re-exported here for the pipeline."""

from shared.text import clean_text

__all__ = ["clean_text"]
