"""webui.py as a live server on 127.0.0.1, over HTTP: the A1111 API, the job API, auth, the page's routes."""
