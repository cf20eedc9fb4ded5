"""A1111's selectable scripts for txt2img and img2img: X/Y/Z plot, Prompt matrix and Prompts from file or textbox.

A script turns one request and its `script_args` (A1111's argument order) into a `Plan`: the requests of its
cells, each checked when the script is submitted, and how to put their images together (a grid with a legend,
and infotexts). `ScriptService` runs a plan as one job in the queue: one progress bar over all the cells,
interruptible, the images made before an interrupt kept.
"""
