"""Objective of the molecule cluster scenario's slow study."""
