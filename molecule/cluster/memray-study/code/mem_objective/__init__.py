"""Objective of the molecule cluster scenario's memray study."""
