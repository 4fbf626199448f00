"""Numerical building blocks shared by several analyses (plain functions with documented signatures)."""
