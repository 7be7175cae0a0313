"""Demonstration datasets: recording and reading LeRobotDataset v3.0 folders."""
