"""Evaluation of edits: precisely named metrics (this layer imports the editing layer, never
the other way round)."""
