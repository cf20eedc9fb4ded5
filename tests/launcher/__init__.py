"""./webui.sh end to end on a fresh copy of the repo with a throwaway venv (minutes)."""
