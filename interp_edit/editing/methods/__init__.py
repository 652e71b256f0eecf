"""The editors, one file each: ROME, MEMIT, AlphaEdit, MEMIT-CSK, FiNE, IntAttn-Edit, ACE, MEGA
and fine-tuning (FT-L). Each module holds its config dataclass (with presets) and one function
``fn(model, requests, config=None, **overrides) -> Edit``; what they share (requests, targets,
the closed-form solve, the layer-spreading loop, statistics) lives one level up, in the editing
core, and in :mod:`interp_edit.statistics`. The name → editor table is
:mod:`interp_edit.editing.registry`."""
