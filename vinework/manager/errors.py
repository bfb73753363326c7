"""The errors the user API raises about the manager itself.

``ManagerError``: the manager's core raised while handling an event (a bug,
or an input it could not cope with). The core's state is then not trusted:
the manager stops taking events, and every later ``submit``/``wait``/``empty``
(and any other call that needs the core) raises the same error, naming the
event's stimulus id and the traceback. ``close()`` still shuts the workers
down cleanly. Nothing is rolled back by guesswork.
"""

from __future__ import annotations


class ManagerError(RuntimeError):
    """The manager's core failed; see the module docstring for the state it leaves."""

    def __init__(self, stimulus_id: str, event: str, traceback: str) -> None:
        last = traceback.strip().splitlines()[-1] if traceback.strip() else "unknown error"
        super().__init__(f"the manager's core failed handling {event} (stimulus "
                         f"{stimulus_id}): {last}\n{traceback}")
        self.stimulus_id = stimulus_id
        self.event = event
        self.traceback = traceback
