"""The Jupyter face's protocol parts: messages built from execution events, and fitting them to a size limit."""
