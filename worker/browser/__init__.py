"""Browser workers: Playwright on Debian's Chromium, driven by playbooks (data, not code)."""
