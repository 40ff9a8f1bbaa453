"""``edgescale serve``: an OpenAI-compatible HTTP server on the shared scheduler.

Needs the ``serve`` extra (Starlette, uvicorn, prometheus_client); nothing here
is imported until the command runs.
"""
