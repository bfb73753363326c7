"""The worker: runs tasks in sandboxes, keeps a cache of files, serves them to peers."""
