"""The kernel agent: a Backend.AI-style compute agent."""
