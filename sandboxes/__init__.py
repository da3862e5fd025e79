"""Where user code runs. Knows nothing of HTTP; never imports ``executor``."""
