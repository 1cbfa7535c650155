"""Dataclasses and enums shared by every layer. Imports nothing of the project but errors."""
