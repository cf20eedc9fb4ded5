"""./webui.sh end to end on a fresh copy of the repo with a throwaway venv (minutes). Every test here is marked
`launcher` by its folder (tests/conftest.py)."""
