"""MEGA: steering the attention output with a gated linear map (no weight change).

Placeholder module: the editor is being built (issue 8). ``HOOK_CLASSES`` lists the
activation-hook classes it defines, for :func:`interp_edit.editing.activation_hooks.hook_kinds`.
"""

HOOK_CLASSES: tuple = ()
