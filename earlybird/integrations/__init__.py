"""Thin adapters to training frameworks; each imports its framework only when used."""
