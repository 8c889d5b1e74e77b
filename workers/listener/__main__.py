"""`python -m workers.listener`: turn storage events into pipeline jobs."""

from workers.listener.main import main

main()
