"""A1111's selectable scripts for txt2img and img2img: X/Y/Z plot, Prompt matrix, Prompts from file or textbox,
and for img2img SD upscale, Loopback, Outpainting mk2 and Poor man's outpainting.

A script turns one request and its `script_args` (A1111's argument order) into a `Plan`: the requests of its
cells, each checked when the script is submitted, and how to put their images together (a grid with a legend,
and infotexts). `ScriptService` runs a plan as one job in the queue: one progress bar over all the cells,
interruptible, the images made before an interrupt kept. A plan may also prepare its cells inside the job
(`prepare`: SD upscale cuts the upscaled image there), take each cell's result as it comes (`fold`), and make
each cell from the one before just before it runs (`chain`: Loopback's loops).
"""
