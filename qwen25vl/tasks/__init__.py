"""Grounding, document parsing, video timestamps and agent actions."""
