"""A1111's prompt syntax lives in `modules/prompt_syntax.py`: the models layer's prompt encoder reads
emphasis and schedules, and may not import the generation layer. This name stays for the callers on
other branches (engine, tests); new code imports `modules.prompt_syntax`."""

from modules.prompt_syntax import (BREAK, MAX_NESTING, emphasis_syntax_in, parse_attention, prompt_problem,
                                   prompt_schedule, split_and)

__all__ = ["BREAK", "MAX_NESTING", "emphasis_syntax_in", "parse_attention", "prompt_problem", "prompt_schedule",
           "split_and"]
