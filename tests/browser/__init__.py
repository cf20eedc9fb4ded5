"""The page in headless Chromium driven by Playwright (tests/support/browser.py). Every test here is marked
`browser` by its folder (tests/conftest.py)."""
