"""Tool modules: Open WebUI tool files registered once and run only inside sandboxes (never imported here)."""
