"""The worker: runs tasks in sandboxes, keeps a cache of files, serves them to peers.

Layout: ``state.py`` is the pure core (every decision; ``records.py`` holds its
records, ``outcome.py`` its per-task decisions, ``events.py`` the events in and
instructions out); ``main.py`` is the asyncio shell that carries the
instructions out, over ``cache.py`` (the cache directory), ``sandbox.py``
(task directories and command processes) and ``pypool.py``/``forkserver.py``
(warm Python interpreters).
"""
