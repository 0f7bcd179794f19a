"""The warm worker: one background process per user and environment that keeps torch and
recent models loaded, so that shell loops stop paying start-up (place.py: where it lives and
who may use it; protocol.py: the messages; client.py: a call handed over; control.py:
start/stop/status; server.py: the worker; isolation.py: each call's process state;
global_state.py and settings.py: what a call changed of the whole process, put back)."""
