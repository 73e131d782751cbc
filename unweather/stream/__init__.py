"""Decode -> infer -> encode over files, folders, cameras and network streams."""
