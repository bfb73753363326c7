"""The worker: runs tasks in sandboxes, keeps a cache of files, serves them to peers.

Layout: ``state.py`` is the pure core (every decision), combining ``base.py``
(its attributes and cache entries), ``fetches.py`` and ``tasks.py``;
``records.py`` holds its records, ``outcome.py`` its per-task decisions (the
outcome matrix, resources), ``events.py`` the events in and instructions out.
``main.py`` is the asyncio shell that carries the instructions out, over
``cache.py`` (the cache directory), ``runner.py`` (task attempts), ``sandbox.py``
(task directories and command processes), ``taskenv.py`` (what a task sees)
and ``pypool.py``/``forkserver.py`` (warm Python interpreters). ``options.py``
is the command line (TaskVine's ``vine_worker`` options) and resource detection.
"""
