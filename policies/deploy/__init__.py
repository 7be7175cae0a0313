"""Exported policies on robots: the reference runtime, its safety layer and robot interfaces."""
