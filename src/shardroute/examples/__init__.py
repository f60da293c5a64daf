"""Runnable examples that ship with shardroute (``shardroute demo`` runs the chat one)."""
