"""The ``orchestrator`` command line."""
