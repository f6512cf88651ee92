"""Benchmarks: each module declares tasks (data files, prompt, metric) on the shared core in `launcher/`.

Importing this package registers every built-in task; `eval_scripts.registry.get_task(name)` finds one.
"""
