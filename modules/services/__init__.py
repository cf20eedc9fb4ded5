"""The services the engine facade is made of (see ARCHITECTURE.md): each one job, a narrow interface.

- checkpoints: which checkpoint a request means; loading, unloading, the start-up load
- options: the settings a request runs with; validated changes; server folders clients may name
- requests: a request checked against the server's limits and resolved once into a JobContext
- generation: txt2img and img2img jobs (load, networks, batch loop, progress)
- extras: post-processing jobs
- output: where images, grids and params.txt are written and how they are named
- describe: A1111's infotext and API `info`, pure functions of a job's frozen record
"""
