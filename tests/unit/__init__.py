"""Functions and small parts on their own: prompts, infotext, saving names, seeds and RNG, folders, auth,
hardening against hostile input, extras maths, the job queue. Fast; a few also build an engine or start a server."""
