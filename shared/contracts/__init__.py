"""The typed data every part of the system shares: jobs and their events, parameters, results,
metrics, training configs, model manifests, API keys and the pipeline's stages.

Only pydantic and the standard library are imported here, so that any part (the terminal client
included) can read and write these without the services behind them.
"""
