"""Agents that ship with the package."""
