"""The page in headless Chromium driven by Playwright (tests/support/browser.py)."""
