"""Where prepared directories and records live: a small filesystem interface (`filesystem`) and the one
content-addressed build-and-publish step every prepared directory goes through (`publish`).

Below everything that reads or writes the tool's directories; object storage implements the same interface.
"""
