"""Egress: the per-workspace proxy that decides every connection a guest makes."""
