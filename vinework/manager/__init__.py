"""The manager: a pure state machine (state, scheduling, replicas, durability)
inside a thin asyncio server (server.py) behind the user's synchronous API (api.py)."""
